"""Child process (8 fake CPU devices): the first train steps on several meshes vs one device.

Three steps, so the learning rate has left zero (warmup) and params really move.

Prints one JSON line: the max |difference| of the loss and of every updated parameter
(and optimiser/EMA leaf) against the single-device step, and how many leaves FSDP split.
"""
import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from biflow_jax.data import input_pipeline
from biflow_jax.objective import phases
from biflow_jax.runtime import parallel
from biflow_jax.training.experiment import build_experiment  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

STEPS = 3


def load_config(path, overrides):
  argv = ['prog', f'--config={path}', *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  return fv.config


def one_step(config, devices, data, fsdp, mode):
  config = config.copy_and_resolve_references()
  config.mesh.data, config.mesh.fsdp, config.mesh.param_sharding = data, fsdp, mode
  config.mesh.fsdp_min_size = 1
  exp = build_experiment(config, mesh=parallel.make_mesh(config.mesh, devices))
  state, shardings = exp.create_state(), exp.state_shardings
  it = input_pipeline.create_train_iterator(config, rows=exp.process_rows())
  for step in range(STEPS):
    batch = exp.global_batch(next(it))
    state, metrics = exp.step(state, batch, exp.frozen_params, phases.phase_at(exp.plan, step))
  split = sum(1 for s in jax.tree.leaves(shardings) if not s.is_fully_replicated)
  return jax.device_get(state), jax.device_get(metrics), split, len(jax.tree.leaves(shardings))


def main():
  config = load_config(sys.argv[1], sys.argv[2:])
  devices = jax.devices()
  assert len(devices) == 8, devices
  ref_state, ref_metrics, _, _ = one_step(config, devices[:1], 1, 1, 'replicated')
  initial = jax.device_get(build_experiment(config, mesh=parallel.make_mesh(config.mesh, devices[:1]))
                           .init_state().params)
  report = {}
  for name, data, fsdp, mode in (('replicated_8', 8, 1, 'replicated'),
                                 ('fsdp_2x4', 2, 4, 'fsdp'), ('fsdp_1x8', 1, 8, 'fsdp')):
    state, metrics, split, total = one_step(config, devices, data, fsdp, mode)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b))),
                         state, ref_state)
    report[name] = dict(
        loss=abs(float(metrics['loss']) - float(ref_metrics['loss'])),
        params=max(jax.tree.leaves(diffs.params)), opt_state=max(jax.tree.leaves(diffs.opt_state)),
        ema=max(jax.tree.leaves(diffs.ema)), leaves_split=split, leaves=total,
        loss_value=float(metrics['loss']),
        param_change=max(jax.tree.leaves(jax.tree.map(
            lambda a, b: float(np.max(np.abs(a - b))), state.params, initial))))
  print(json.dumps(report))


if __name__ == '__main__':
  main()
