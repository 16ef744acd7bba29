"""Scale-out with JAX's own machinery: one `jax.jit` over a `Mesh`, multi-host via `jax.distributed`.

Mesh axes are ('data', 'fsdp'). The batch is split over both axes (every device sees
its own rows). Parameters, optimiser state and EMA are either replicated on every
device, or, with `config.mesh.param_sharding='fsdp'`, each large array is split along
one of its dimensions over the 'fsdp' axis (ZeRO-3 style: XLA gathers a layer's weights
where they are used and reduce-scatters their gradients). The same train step runs in
both cases; only the shardings handed to `jax.jit` differ.

Each process loads the rows of the global batch that its own devices hold and the
pieces are assembled with `jax.make_array_from_process_local_data`, so a global batch
is the same array whatever the number of hosts.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp')
BATCH_SPEC = P(AXES)  # rows split over every device of the mesh
PARAM_SHARDINGS = ('replicated', 'fsdp')

# Environment variables that mark a multi-process job, and what they mean.
_CLUSTER_HINTS = {
    'SLURM_NTASKS': 'SLURM',
    'OMPI_COMM_WORLD_SIZE': 'Open MPI',
    'TPU_WORKER_HOSTNAMES': 'Cloud TPU',
}


# ------------------------------------------------------------------- jax.distributed


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
  """The kind of multi-process launch the environment shows, or None for one process."""
  env = os.environ if environ is None else environ
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in env:
    return 'SLURM'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return 'Open MPI'
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1:
    return 'Cloud TPU'
  return None


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1, local_device_ids: str = '',
                           cpu_collectives: str = '',
                           environ: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize` when this is a multi-process job; True if it did.

  Explicit flags win (an explicit coordinator for anything JAX does not detect; also
  from BIFLOW_COORDINATOR / BIFLOW_NUM_PROCESSES / BIFLOW_PROCESS_ID); else JAX's own
  detection when the environment shows SLURM, Open MPI or a GKE TPU slice, or when
  BIFLOW_DISTRIBUTED=1 (Cloud TPU VMs, which JAX finds through their metadata server);
  else nothing (one process owns all local devices). Must run before anything touches
  a device.
  """
  env = os.environ if environ is None else environ
  coordinator_address = coordinator_address or env.get('BIFLOW_COORDINATOR', '')
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  kwargs: dict[str, Any] = {}
  if local_device_ids:
    kwargs['local_device_ids'] = [int(i) for i in local_device_ids.split(',')]
  if coordinator_address:
    if num_processes <= 0 or process_id < 0:
      num_processes = num_processes if num_processes > 0 else int(env.get('BIFLOW_NUM_PROCESSES', 0))
      process_id = process_id if process_id >= 0 else int(env.get('BIFLOW_PROCESS_ID', -1))
    if num_processes <= 0 or not 0 <= process_id < num_processes:
      raise ValueError(
          f'--coordinator_address={coordinator_address} needs --num_processes (>0) and '
          f'--process_id in [0, num_processes) (got {num_processes}, {process_id}); or set '
          'BIFLOW_NUM_PROCESSES and BIFLOW_PROCESS_ID')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
  else:
    cluster = detect_cluster(env)
    if cluster is None and env.get('BIFLOW_DISTRIBUTED', '') not in ('', '0'):
      cluster = 'BIFLOW_DISTRIBUTED=1: JAX'  # e.g. Cloud TPU VMs, found via their metadata
    if cluster is None:
      return False
    logging.info('%s environment detected: jax.distributed.initialize() from it', cluster)
    jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local of %d devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, sample grids and config; every process writes its checkpoint shards."""
  return jax.process_index() == 0


# Substrings of the errors a collective raises when another process of the job is gone
# (gloo over TCP; the coordination service's heartbeat check).
_LOST_PROCESS_SIGNS = ('Connection reset by peer', 'Connection closed by peer', 'Broken pipe',
                       'heartbeat', 'UNAVAILABLE')


@contextlib.contextmanager
def exit_promptly_if_a_process_is_lost() -> Iterator[None]:
  """In a multi-process job, a failed collective ends this process at once, with a message.

  When one process dies, the others' next collective fails (gloo: the peer's socket
  closes) or, where collectives just wait (NCCL, ICI), JAX's coordination service stops
  them after its heartbeat timeout (100 s). Left alone, a process whose collective failed
  would then block at exit in JAX's shutdown barrier until that heartbeat timeout and
  abort with a C++ stack trace. Here it logs the error and what to do, and exits with
  status 1 at once (os._exit: no shutdown barrier; an async checkpoint still being written
  is left as an orbax temporary directory that restore ignores). One process: no-op.
  """
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    lost = any(sign in str(e) for sign in _LOST_PROCESS_SIGNS)
    logging.exception('process %d of %d: a collective failed', jax.process_index(),
                      jax.process_count())
    logging.error(
        'process %d of %d stops now: %s. Restart every process of the job with the same '
        'command; training resumes from the last complete checkpoint.', jax.process_index(),
        jax.process_count(),
        'another process of this job is gone (killed, crashed or its host lost); see its log '
        'for why' if lost else 'the job cannot go on without all of its processes')
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access  (skip the shutdown barrier: see above)


# ---------------------------------------------------------------------------- mesh


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes; one of them may be -1 for 'all the remaining devices'."""
  data, fsdp = int(mesh_cfg.data), int(mesh_cfg.fsdp)
  if data == -1 and fsdp == -1:
    raise ValueError('config.mesh.data and config.mesh.fsdp cannot both be -1')
  for name, size in (('data', data), ('fsdp', fsdp)):
    if size == 0 or size < -1:
      raise ValueError(f'config.mesh.{name}={size}: use a positive size or -1 for the rest')
  if data == -1 or fsdp == -1:
    known = fsdp if data == -1 else data
    if num_devices % known:
      raise ValueError(f'config.mesh: {num_devices} devices are not divisible by '
                       f'{known} (config.mesh.{"fsdp" if data == -1 else "data"})')
    data, fsdp = (num_devices // known, known) if data == -1 else (known, num_devices // known)
  if data * fsdp != num_devices:
    raise ValueError(f'config.mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but '
                     f'{num_devices} are available: make the product match or use -1')
  return data, fsdp


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The ('data', 'fsdp') mesh over `devices` (default: every device of every process).

  Devices are laid out process-major, so each process's devices hold one contiguous
  block of batch rows.
  """
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp = mesh_shape(mesh_cfg, len(devices))
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """Shard the largest dimension divisible by the fsdp size; small arrays stay replicated."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_tree: Any, mesh: Mesh, mesh_cfg) -> Any:
  """NamedShardings for a tree of arrays (train state, params): replicated or FSDP.

  The rule depends only on each leaf's shape, so Adam moments and EMA end up sharded
  exactly like the parameters they track.
  """
  mode = mesh_cfg.param_sharding
  if mode not in PARAM_SHARDINGS:
    raise ValueError(f'config.mesh.param_sharding={mode!r} is not one of {PARAM_SHARDINGS}')
  fsdp = mesh.shape['fsdp'] if mode == 'fsdp' else 1
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), fsdp, mesh_cfg.fsdp_min_size)),
      abstract_tree)


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs that carry shardings: what orbax restores onto (any mesh)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


# --------------------------------------------------------------------------- batches


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a global batch held by this process's devices (one contiguous block)."""
  sharding = batch_sharding(mesh)
  per_device = sharding.addressable_devices_indices_map((global_batch,))
  rows = sorted({(idx[0].start or 0, idx[0].stop or global_batch) for idx in per_device.values()})
  start, stop = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != stop - start:
    raise ValueError(f'process {jax.process_index()} holds non-contiguous batch rows {rows}: '
                     'build the mesh with parallel.make_mesh (process-major device order)')
  return slice(start, stop)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  if global_batch % mesh.size:
    raise ValueError(f'config.batch_size={global_batch} is not divisible by the {mesh.size} '
                     f'devices of the mesh {dict(mesh.shape)}: every device needs whole rows; '
                     'pick a multiple of the device count')


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, batch_size: int) -> dict:
  """Host-local rows -> global arrays sharded over the mesh (every process calls this)."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_process_local_data(
        sharding, value, (batch_size,) + value.shape[1:])
  return out


def local_copy(tree: Any) -> Any:
  """The same values as arrays this process alone can compute with.

  Evaluation runs one program per process on that process's share of the samples, which
  a jit over arrays that span other processes' devices cannot do (every process would
  have to join each call). Fully replicated leaves become their local replica (no copy);
  leaves sharded over several processes (FSDP) are gathered to numpy, so every process
  must call this, in the same order. Single-process trees come back unchanged.
  """
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if x.is_fully_replicated:
      return x.addressable_data(0)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) array on this host, as numpy."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
