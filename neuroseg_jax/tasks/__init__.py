"""Registry of task families; `config.task` names one of them."""

import importlib

from neuroseg_jax.registry import Registry

TASKS = Registry("task")

# Modules that register tasks when imported. Kept as names so that importing the
# registry stays cheap and a task's heavy dependencies load only when used.
_TASK_MODULES = ("neuroseg_jax.tasks.yolo_seg", "neuroseg_jax.tasks.tico_pretrain",
                 "neuroseg_jax.tasks.mae_pretrain", "neuroseg_jax.tasks.unetr_finetune",
                 "neuroseg_jax.tasks.em_slices")


def get_task(name: str):
  """The Task class registered as `name`, importing task modules in turn until one
  registers it (a task registered elsewhere, like the tests' toy task, imports none);
  an unknown name imports them all, so its error lists every choice."""
  for module in _TASK_MODULES:
    if name in TASKS:
      break
    importlib.import_module(module)
  return TASKS.get(name)


def build(config):
  """The task `config.task` names, built from `config` (what entry points hand the engine)."""
  return get_task(config.task)(config)
