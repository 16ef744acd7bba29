"""Scale-out: sharded equals unsharded, several processes equal one, checkpoints move meshes.

Fake devices need XLA_FLAGS before JAX starts, so the multi-device runs happen in child
processes (tests/multidevice/), each with a time limit; this process compares results.
"""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from biflow_jax.data import input_pipeline
from biflow_jax.runtime import parallel
from biflow_jax.training import restore
from subprocess_util import broken_python_on_path, launch, python
from test_train import TINY, parse_config

CHILDREN = Path(__file__).parent / 'multidevice'
TOL = 1e-5


def restore_both(config, workdir_a, workdir_b, step):
  """The latest train states of two runs, both at `step`, restored onto this process."""
  _, a, step_a = restore.restore_run(config, workdir_a)
  _, b, step_b = restore.restore_run(config, workdir_b)
  assert step_a == step_b == step
  return a, b


def max_diff(a, b) -> float:
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))),
                       a, b)
  return max(jax.tree.leaves(diffs))


# ------------------------------------------------------------------------- unit level


def mesh_cfg(**kw):
  return ConfigDict(dict(dict(data=-1, fsdp=1, param_sharding='replicated', fsdp_min_size=16), **kw))


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
  assert parallel.mesh_shape(mesh_cfg(), 8) == (8, 1)
  assert parallel.mesh_shape(mesh_cfg(fsdp=4), 8) == (2, 4)
  assert parallel.mesh_shape(mesh_cfg(data=2, fsdp=-1), 8) == (2, 4)
  with pytest.raises(ValueError, match='not divisible by 3'):
    parallel.mesh_shape(mesh_cfg(fsdp=3), 8)
  with pytest.raises(ValueError, match='16 devices, but 8'):
    parallel.mesh_shape(mesh_cfg(data=4, fsdp=4), 8)
  with pytest.raises(ValueError, match='both be -1'):
    parallel.mesh_shape(mesh_cfg(data=-1, fsdp=-1), 8)


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((128, 512), 4, 16) == jax.sharding.PartitionSpec(None, 'fsdp')
  assert parallel.fsdp_spec((6, 8), 4, 16) == jax.sharding.PartitionSpec(None, 'fsdp')
  assert parallel.fsdp_spec((6, 10), 4, 16) == jax.sharding.PartitionSpec()  # nothing divides
  assert parallel.fsdp_spec((4,), 4, 16) == jax.sharding.PartitionSpec()     # too small
  assert parallel.fsdp_spec((128, 512), 1, 16) == jax.sharding.PartitionSpec()


def test_detect_cluster_from_the_environment():
  assert parallel.detect_cluster({}) is None
  assert parallel.detect_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}) == 'SLURM'
  assert parallel.detect_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None
  assert parallel.detect_cluster({'OMPI_COMM_WORLD_SIZE': '2'}) == 'Open MPI'
  assert parallel.detect_cluster({'TPU_WORKER_HOSTNAMES': 'a,b'}) == 'Cloud TPU'
  assert parallel.detect_cluster({'TPU_WORKER_HOSTNAMES': 'a'}) is None


def test_explicit_coordinator_needs_process_count_and_id():
  with pytest.raises(ValueError, match='--num_processes'):
    parallel.initialize_distributed('127.0.0.1:1234', environ={})


def test_one_device_run_is_unchanged_by_the_mesh():
  mesh = parallel.make_mesh(mesh_cfg())
  assert parallel.process_rows(mesh, 16) == slice(0, 16)
  batch = parallel.global_batch({'x': np.arange(16.0)}, mesh, 16)
  np.testing.assert_array_equal(parallel.to_host(batch['x']), np.arange(16.0))


def test_iterator_positions_by_global_batch_count():
  config = parse_config()
  walked = input_pipeline.create_train_iterator(config)
  for _ in range(4):
    next(walked)
  jumped = input_pipeline.create_train_iterator(config, process_index=1, process_count=2)
  input_pipeline.skip_to(jumped, 4)
  expected = next(walked)['label'][8:]
  np.testing.assert_array_equal(next(jumped)['label'], expected)


# ----------------------------------------------------------------- fake devices, children


def test_sharded_steps_equal_one_device():
  """Three steps of the tiny config: 8 devices replicated, FSDP 2x4 and 1x8 vs 1 device."""
  out = python(CHILDREN / 'one_step_equality.py', TINY).stdout
  report = json.loads(out.strip().splitlines()[-1])
  for name, r in report.items():
    assert r['loss'] <= TOL and r['params'] <= TOL and r['ema'] <= TOL, (name, r)
    assert r['opt_state'] <= TOL, (name, r)
    assert r['param_change'] > 10 * TOL, (name, r)  # the comparison is not vacuous
  assert report['replicated_8']['leaves_split'] == 0
  assert report['fsdp_2x4']['leaves_split'] > report['fsdp_2x4']['leaves'] // 2


# The default run keeps test_sharded_steps_equal_one_device.
@pytest.mark.slow  # two gloo processes and a reference run (~2 min)
def test_two_processes_match_one(tmp_path):
  """2 processes x 2 devices (gloo over 127.0.0.1) == 1 process x 4 devices, 5 steps;
  the 2-process checkpoint then resumes in 1 process and still matches at step 8."""
  common = [f'--config={TINY}', '--config.schedule.forward_steps=8', '--config.checkpoint_every=5']
  # The processes run this interpreter (PYTHON), never the `python` on PATH (here a broken one).
  env = broken_python_on_path(tmp_path / 'bin')

  def run(n, d, workdir, *args):
    launch('local_multiprocess.sh', n, d, f'--workdir={workdir}', *args, *common, timeout=240,
           env=env, logs=[workdir / 'logs' / 'process_*.log'])

  run(2, 2, tmp_path / 'two', '--stop_at=5')
  run(1, 4, tmp_path / 'one', '--stop_at=5')
  config = parse_config('--config.schedule.forward_steps=8')
  two, one = restore_both(config, tmp_path / 'two', tmp_path / 'one', 5)
  assert max_diff(two.params, one.params) <= TOL
  assert max_diff(two.ema, one.ema) <= TOL
  # Both processes wrote their iterator state; process 0 alone wrote the config.
  assert sorted(p.name for p in (tmp_path / 'two' / 'checkpoints' / '5' / 'data').glob('process_*')) \
      == ['process_0-of-2.json', 'process_1-of-2.json']
  assert (tmp_path / 'two' / 'config.json').exists()
  # Another process count resumes: the data stream is positioned by the step.
  for name in ('two', 'one'):
    run(1, 4, tmp_path / name)
  two, one = restore_both(config, tmp_path / 'two', tmp_path / 'one', 8)
  assert max_diff(two.params, one.params) <= TOL
  assert (tmp_path / 'two' / 'samples' / 'step_8.png').exists()


@pytest.mark.slow  # two 8/4-device subprocess runs (~1 min)
def test_checkpoint_from_8_devices_trains_on_with_4(tmp_path):
  """Saved mid-run on 8 devices (replicated), resumed on 4 (FSDP): equals 8 devices throughout."""
  child = CHILDREN / 'train_child.py'
  common = [TINY, '--config.schedule.forward_steps=10', '--config.checkpoint_every=5']
  fsdp = ['--config.mesh.fsdp=4', '--config.mesh.param_sharding=fsdp',
          '--config.mesh.fsdp_min_size=256']
  python(child, '8', tmp_path / 'moved', '5', *common)
  python(child, '4', tmp_path / 'moved', '0', *common, *fsdp)
  python(child, '8', tmp_path / 'straight', '0', *common)
  config = parse_config('--config.schedule.forward_steps=10')
  moved, straight = restore_both(config, tmp_path / 'moved', tmp_path / 'straight', 10)
  assert max_diff(moved.params, straight.params) <= TOL
  assert max_diff(moved.opt_state, straight.opt_state) <= TOL


def test_batch_must_split_over_the_mesh():
  mesh = parallel.make_mesh(mesh_cfg())
  parallel.check_batch_divisible(16, mesh)
  fake = type('FakeMesh', (), {'size': 8, 'shape': {'data': 8, 'fsdp': 1}})()
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    parallel.check_batch_divisible(12, fake)
