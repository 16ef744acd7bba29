"""Per-step time of one config on 1 device vs a mesh of N fake CPU devices.

  python -m biflow_jax.tools.mesh_overhead --config=configs/mnist.py [--devices=8] [--steps=20]

The N fake devices share the same CPU cores, so this measures what the mesh costs
(partitioning, collectives, host->device batch assembly), not a speed-up. Each layout
runs in its own child process (the device count is fixed when JAX starts); the parent
prints the medians and the ratios against one device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# The device count is fixed when JAX starts its backend, which importing jax does not do:
# each child gets its own XLA_FLAGS before its first jax call.
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from biflow_jax.data import input_pipeline
from biflow_jax.runtime import cli
from biflow_jax.training.experiment import build_experiment

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_integer('devices', 8, 'Fake CPU devices of the mesh runs.')
flags.DEFINE_integer('steps', 20, 'Timed steps per layout (after 3 warm-up steps).')
flags.DEFINE_string('child', '', 'internal: run one layout "devices,data,fsdp,param_sharding".')

LAYOUTS = ('1,1,1,replicated', '{n},-1,1,replicated', '{n},1,-1,fsdp')


def run_layout(config, devices: int, data: int, fsdp: int, mode: str, steps: int) -> dict:
  assert jax.device_count() == devices, (jax.device_count(), devices)
  config.mesh.data, config.mesh.fsdp, config.mesh.param_sharding = data, fsdp, mode
  exp = build_experiment(config)
  state = exp.create_state()
  it = input_pipeline.create_train_iterator(config, rows=exp.process_rows())
  phase = exp.plan[0]
  times = []
  for i in range(steps + 3):
    start = time.perf_counter()
    batch = exp.global_batch(next(it))
    state, metrics = exp.step(state, batch, exp.frozen_params, phase)
    jax.block_until_ready(metrics['loss'])
    if i >= 3:
      times.append(time.perf_counter() - start)
  return {'devices': devices, 'mesh': dict(exp.mesh.shape), 'param_sharding': mode,
          'median_step_s': float(np.median(times)), 'loss': float(metrics['loss'])}


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.child:
    devices, data, fsdp, mode = FLAGS.child.split(',')
    print(json.dumps(run_layout(config, int(devices), int(data), int(fsdp), mode, FLAGS.steps)))
    return
  results = []
  passthrough = [a for a in sys.argv[1:] if a.startswith('--config')]
  for layout in LAYOUTS:
    layout = layout.format(n=FLAGS.devices)
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={layout.split(",")[0]}')
    out = subprocess.run([sys.executable, '-m', 'biflow_jax.tools.mesh_overhead', *passthrough,
                          f'--steps={FLAGS.steps}', f'--child={layout}'],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:  # the child's own error, not a CalledProcessError
      sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
      print(f'mesh_overhead: layout {layout} failed (exit {out.returncode})', file=sys.stderr)
      sys.exit(out.returncode)
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = results[0]['median_step_s']
  for r in results:
    r['ratio_vs_1_device'] = r['median_step_s'] / base
    print(f"{r['devices']} device(s) {r['mesh']} {r['param_sharding']:>10}: "
          f"{1e3 * r['median_step_s']:.1f} ms/step, x{r['ratio_vs_1_device']:.2f} vs 1 device, "
          f"loss {r['loss']:.6f}")
  print(json.dumps(results))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
