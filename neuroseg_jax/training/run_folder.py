"""What made a run folder: the fingerprint of its config and input data.

A run folder (`workdir`) is resumed by calling the engine again with the same
folder. That is only right when the second call trains the same experiment:
`DIR/run.json` records the config (as JSON) and two fingerprints of every input
file or folder the config names: one of each file's relative name, size and
modification time (checked on every resume: a 20 GB movie costs one `stat`) and one
of their bytes (read once, when the folder is made). A later run in the same folder
with another config or other data is refused with the fields that differ, unless
the caller asks to overwrite (which removes only the engine's own outputs). When
only the time stamps changed (data copied or re-provisioned without keeping them),
the bytes are read again: the same content resumes the run and re-stamps the record.

Fields that do not change what is trained (how often to log, evaluate or save,
input workers, whether micro-batches are unrolled) and the run length (`num_steps`, so a run can be extended) are
left out of the comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any, Iterator

import ml_collections

from neuroseg_jax.errors import UserError
from neuroseg_jax.training import defaults

RECORD = "run.json"
# Engine outputs that `overwrite` removes; anything else in the folder is left alone.
OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "config.json", RECORD)
IGNORED_FIELDS = frozenset({"num_steps", "log_every", "eval_every", "checkpoint_every",
                            "keep_checkpoints", "checkpoint_async", "data_workers", "prefetch",
                            "grad_accum_form"})
# Config groups that say how a run is evaluated, not what is trained: a finished run can
# be evaluated again with other settings (e.g. a wider post-processing grid).
IGNORED_GROUPS = ("eval.",)


class RunFolderError(UserError):
  """The run folder holds another experiment, or cannot be written."""


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  if isinstance(tree, dict):
    for key in sorted(tree):
      yield from _flatten(tree[key], f"{prefix}{key}.")
  elif isinstance(tree, (list, tuple)):
    for index, item in enumerate(tree):
      yield from _flatten(item, f"{prefix}{index}.")
  else:
    yield prefix[:-1], tree


# An engine field added after a run's record was written counts as its default there.
ENGINE_DEFAULTS = dict(_flatten(defaults.base_config().to_dict()))


def _paths_in(value: Any) -> Iterator[str]:
  """Existing files or folders named by a config string (also `a;b` lists, `kind:path`)."""
  if not isinstance(value, str) or not value:
    return
  for part in value.split(";"):
    for candidate in (part, part.partition(":")[2]):
      if candidate and os.path.exists(candidate):
        yield candidate
        break


def _input_files(path: str) -> Iterator[tuple[str, str]]:
  """(name, path) of the file, or of every file under the folder (name relative to it),
  in a fixed order. A run folder (an MAE run named by `pretrained=`) counts by its
  checkpoints alone: reusing or re-evaluating it rewrites its logs, and runs nested in
  it train on."""
  if os.path.isfile(os.path.join(path, RECORD)):
    path = os.path.join(path, "checkpoints")
  if os.path.isfile(path):
    yield os.path.basename(path), path
    return
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      yield os.path.relpath(os.path.join(root, name), path), os.path.join(root, name)


def _stats_digest(inputs: list[str]) -> str:
  """sha256 of the inputs' file names, sizes and modification times."""
  digest = hashlib.sha256()
  for path in inputs:
    digest.update(path.encode())
    for name, file in _input_files(path):
      info = os.stat(file)
      digest.update(f"{name}:{info.st_size}:{info.st_mtime_ns}".encode())
  return digest.hexdigest()


def content_digest(inputs: list[str]) -> str:
  """sha256 of the inputs' file names, sizes and bytes (read in 1 MiB chunks)."""
  digest = hashlib.sha256()
  for path in inputs:
    digest.update(path.encode())
    for name, file in _input_files(path):
      digest.update(f"{name}:{os.path.getsize(file)}".encode())
      with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)
  return digest.hexdigest()


def _compared(fields: dict) -> dict:
  """The fields that decide whether two runs are the same experiment."""
  return {k: v for k, v in fields.items()
          if k not in IGNORED_FIELDS and not k.startswith(IGNORED_GROUPS)}


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """{"config": {field: value}, "data": sha256 of the named inputs' stats, "inputs": [...]}
  (the content digest is added by `claim` when it writes a new record)."""
  fields = dict(_flatten(json.loads(config.to_json_best_effort())))
  inputs = sorted({os.path.abspath(p) for v in fields.values() for p in _paths_in(v)})
  return {"config": _compared(fields), "data": _stats_digest(inputs), "inputs": inputs}


def _write_record(path: str, record: dict) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)


def _restamped(previous: dict, current: dict, path: str) -> dict:
  """`previous` with the current stats digest, written to `path`, when only the inputs'
  time stamps changed (same input list, same bytes as recorded); else `previous`."""
  if (previous["data"] == current["data"] or "content" not in previous
      or previous["inputs"] != current["inputs"]
      or previous["content"] != content_digest(current["inputs"])):
    return previous
  logging.info("%s: the input files have new time stamps but the same content", path)
  previous = {**previous, "data": current["data"]}
  _write_record(path, previous)
  return previous


def _differences(old: dict, new: dict) -> list[str]:
  # A record written before a field became ignored still holds it: compare without it.
  old, new = {**old, "config": _compared(old["config"])}, {**new, "config": _compared(new["config"])}
  keys = sorted(set(old["config"]) | set(new["config"]))
  changed = [k for k in keys
             if old["config"].get(k, ENGINE_DEFAULTS.get(k)) != new["config"].get(k)]
  text = [f"{k}: {old['config'].get(k)!r} -> {new['config'].get(k)!r}" for k in changed[:4]]
  if len(changed) > 4:
    text.append(f"and {len(changed) - 4} more fields")
  if old["data"] != new["data"]:
    text.append("the input data changed (files " + ", ".join(new["inputs"][:3]) + ")")
  return text


def clear_outputs(workdir: str) -> None:
  """Removes the engine's outputs from `workdir` (not the user's other files)."""
  for name in OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def claim(workdir: str, config: ml_collections.ConfigDict, overwrite: bool = False) -> bool:
  """Makes `workdir` this run's folder; returns True when it resumes a matching run.

  Raises RunFolderError when the folder holds a run of another config or other
  data (and `overwrite` is False), or when it cannot be written.
  """
  current = fingerprint(config)
  record = os.path.join(workdir, RECORD)
  try:
    os.makedirs(workdir, exist_ok=True)
    if overwrite:
      clear_outputs(workdir)
    if os.path.exists(record):
      with open(record) as f:
        previous = json.load(f)
      previous = _restamped(previous, current, record)
      differences = _differences(previous, current)
      if differences:
        raise RunFolderError(
            f"{workdir}: holds a run of a different experiment ({'; '.join(differences)}); "
            "choose another folder or pass --overwrite to replace it")
      logging.info("%s: same config and data as the run there; resuming it", workdir)
      return True
    _write_record(record, {**current, "content": content_digest(current["inputs"])})
  except OSError as e:
    raise RunFolderError(f"{workdir}: cannot write the run folder ({e.strerror})") from e
  return False
