"""Devices, mesh and shardings: data parallel over every device of every host.

State is replicated (`state_shardings` is the seam for sharding rules later);
batches are global arrays split along their leading axis over the "data" axis.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that ask for a multi-process run. The JAX_* names are
# ours (explicit coordinator); cluster managers are detected by JAX itself.
_COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
_CLUSTER_ENVS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` when the environment says so.

  Either an explicit coordinator (JAX_COORDINATOR_ADDRESS=host:port with
  JAX_NUM_PROCESSES and JAX_PROCESS_ID) or a cluster manager JAX detects
  (SLURM, Open MPI, TPU pods). Must run before any other JAX call.
  """
  if os.environ.get(_COORDINATOR_ENV):
    jax.distributed.initialize(
        coordinator_address=os.environ[_COORDINATOR_ENV],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif any(int(os.environ.get(name, "1") or 1) > 1 for name in _CLUSTER_ENVS
           if name != "TPU_WORKER_HOSTNAMES") or "," in os.environ.get(
               "TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()
  else:
    return
  logging.info("distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: every device of every host)."""
  devices = list(devices) if devices is not None else jax.devices()
  # Auto axes: XLA propagates shardings; model code needs no sharding annotations.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over the data axis; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Sharding of every state leaf. All replicated: plain data parallelism."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Examples this process feeds per step; checks the batch divides evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f"batch_size={global_batch_size} must be divisible by the number of "
                     f"devices ({num_devices}) for data parallelism")
  return global_batch_size // jax.process_count()


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> dict of global arrays sharded on the data axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def host_to_global(tree: Any, shardings: Any) -> Any:
  """Host numpy values, identical on every process -> global arrays with `shardings`."""
  return jax.tree.map(
      lambda x, sharding: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree, shardings)


def split_over_data(tree: Any, mesh: Mesh) -> Any:
  """Host numpy values, identical on every process -> global arrays split along their
  leading axis over the data axis (its size must be a multiple of the mesh's)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]), tree)


def to_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host numpy values, identical on every process -> replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
