"""The package's import directions (../shared/STYLE.md "the house"), checked on the code.

Walks every module of `neuroseg_jax` with `ast`, collects the package modules it
imports (at any depth: top level or inside functions), and asserts each layer
imports only what it may. Entry points (cli, main, demo) may import anything.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "neuroseg_jax"
ROOT_PIECES = {"errors", "registry"}  # package-wide, importable from every layer
GEOMETRY = "models.box_geometry"       # the one models/ module losses/ may use

ALLOWED = {
    "training": {"training"},
    "models": {"models"},
    "losses": {"losses", GEOMETRY},
    "data": {"data"},
    # and the MAE's target space (norm-pix), to show reconstructions in voxel values
    "evaluation": {"evaluation", "models", "data", "losses.reconstruction"},
    "tasks": {"tasks", "models", "losses", "data", "evaluation", "training", "config_args",
              "reference", "model_folder"},
    "reference": {"reference", "models"},
}


def _imports(path: pathlib.Path) -> set[str]:
  """Package-relative dotted names imported by `path` ("models.vit", "errors", ...)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      modules = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from neuroseg_jax.models import vit` -> models.vit; `from neuroseg_jax import
      # tasks` -> tasks; `from neuroseg_jax.errors import DataError` -> errors.DataError.
      modules = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    names.update(m[len("neuroseg_jax."):] for m in modules if m.startswith("neuroseg_jax."))
  return names


def _allowed(layer: str, imported: str) -> bool:
  top = imported.split(".")[0]
  if top in ROOT_PIECES or top == layer:
    return True
  return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[layer])


def test_layers_import_only_allowed_directions():
  violations = []
  for path in sorted(PACKAGE.rglob("*.py")):
    layer = path.relative_to(PACKAGE).parts[0]
    if layer not in ALLOWED:
      continue
    for imported in sorted(_imports(path)):
      if not _allowed(layer, imported):
        violations.append(f"{path.relative_to(PACKAGE)} imports neuroseg_jax.{imported}")
  assert not violations, "\n".join(violations)


def test_root_pieces_import_nothing_of_the_layers():
  for name in ROOT_PIECES:
    imported = {i.split(".")[0] for i in _imports(PACKAGE / f"{name}.py")}
    assert imported <= ROOT_PIECES, f"{name}.py imports {imported - ROOT_PIECES}"


def test_the_checker_sees_a_violation(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from neuroseg_jax.tasks import yolo_seg\n"
                 "def f():\n  from neuroseg_jax.data import movies\n")
  assert _imports(bad) == {"tasks.yolo_seg", "data.movies"}
  assert not _allowed("training", "tasks.yolo_seg")
  assert not _allowed("models", "data.movies")
  assert _allowed("losses", GEOMETRY) and not _allowed("losses", "models.vit")
