"""Parameters and FLOPs of a config's train step and 1-NFE sample, without running anything.

  python -m biflow_jax.tools.step_cost --config=configs/imagenet256.py:B [--out=cost.json]

Everything is abstract: shapes from `jax.eval_shape`, FLOPs from XLA's cost analysis of
the lowered (not compiled, not executed) programs, so it works on a laptop CPU for a model
that needs a TPU pod. Times are arithmetic, FLOPs / (MFU x peak), and are labelled so.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from biflow_jax.objective import frozen
from biflow_jax.runtime import cli, files, parallel, timing
from biflow_jax.training.experiment import build_experiment, example_batch

# Chips the estimate is printed for (dense bf16 peak TFLOP/s, as in timing.PEAK_TFLOPS).
ESTIMATE_CHIPS = ('TPU v5p', 'NVIDIA H200')
ESTIMATE_MFU = 0.4


def count(tree: Any) -> int:
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _flops(cost) -> float:
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def lowered_flops(fn, *args) -> float:
  """FLOPs of one call from XLA's HLO cost analysis of the lowered program."""
  return _flops(jax.jit(fn).lower(*args).cost_analysis())


def unrolled(config):
  """A copy of config with scan and remat off in F and G (the layout FLOPs are counted on)."""
  config = config.copy_and_resolve_references()
  for group in (config.model, config.reverse):
    if 'scan' in group:
      group.scan = False
    if 'remat' in group:
      group.remat = 'none'
  return config


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of a global batch, rows split over the mesh as training lays them."""
  rows = parallel.batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rows),
                      example_batch(config))


def step_memory(exp, timings: dict | None = None) -> dict[str, dict | None]:
  """XLA's memory analysis per device (`timing.memory_of`, bytes) of each phase's
  compiled train step: the experiment's own jitted, sharded step on its mesh, lowered from
  abstract state and batch (nothing runs). Compiles each phase (minutes for a large config
  on a CPU); timings, when given, receives each phase's lower + compile seconds."""
  batch = abstract_batch(exp.config, exp.mesh)
  out = {}
  for phase in exp.plan:
    start = time.perf_counter()
    compiled = exp.step.lower(exp.abstract_state, batch, exp.frozen_params, phase).compile()
    if timings is not None:
      timings[phase.name] = time.perf_counter() - start
    out[phase.name] = timing.memory_of(compiled)
  return out


def step_cost(config, memory: bool = False) -> dict:
  """Parameter counts per network and FLOPs per train step (each phase) and per sample.

  memory: also compile each phase's step (minutes for a large config on a CPU) and report
  XLA's memory analysis per device (`timing.memory_of`: arguments, outputs,
  temporaries, aliased, total) for this config's mesh over the visible devices.
  """
  # XLA's cost analysis counts a loop body once, so FLOPs are counted on the unrolled
  # layout (scan and remat off: the same maths, without remat's recomputation); memory is
  # the configured layout's.
  exp = build_experiment(unrolled(config), abstract=True)
  models, frozen_params, state = exp.models, exp.frozen_params, exp.abstract_state
  configured = build_experiment(config, abstract=True) if memory else None
  nets = models.frozen
  batch = abstract_batch(config, exp.mesh)
  result: dict[str, Any] = {
      'batch_size': int(config.batch_size),
      'params_forward': count(state.params['forward']),
      'params_reverse': count(state.params.get('reverse', {})),
      'params_vae_decoder': count(frozen_params.get('vae', {})),
      'params_perceptual': {k: count(v) for k, v in frozen_params.get('perceptual', {}).items()},
      'train_step_flops': {},
  }
  if memory:
    result['num_devices'] = int(exp.mesh.size)
  for phase in exp.plan:  # the jitted, sharded step that training runs
    lowered = exp.step.lower(state, batch, frozen_params, phase)
    result['train_step_flops'][phase.name] = _flops(lowered.cost_analysis())
  if memory:
    result['train_step_memory_bytes'] = step_memory(configured)

  flow, generator = models.flow, models.generator
  tokens = jax.ShapeDtypeStruct((1, flow.num_tokens, flow.token_dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  image = jax.ShapeDtypeStruct((1,) + flow.image_shape, jnp.float32)
  # F's exact inverse does the work of one forward pass, spread over T x B serial steps
  # (KV cache); cost analysis counts a loop body once, so the forward pass is measured.
  result['sample_flops_forward_pass_F'] = lowered_flops(
      lambda p, x, y: flow.apply({'params': p}, x, y)[0], state.params['forward'], image, labels)
  if generator is not None:
    result['sample_flops_G'] = lowered_flops(
        lambda p, z, y: generator.apply({'params': p}, z, y, jnp.zeros((1,)))[0],
        state.params['reverse'], tokens, labels)
  if nets is not None and nets.vae is not None:
    result['sample_flops_vae_decode'] = lowered_flops(
        lambda p, x: frozen.to_images(nets, p, x), frozen_params, image)
  result['estimates'] = estimates(result)
  return result


def estimates(result: dict) -> dict:
  """Arithmetic times at ESTIMATE_MFU of each chip's dense bf16 peak (not measurements)."""
  out = {}
  for chip in ESTIMATE_CHIPS:
    rate = ESTIMATE_MFU * timing.PEAK_TFLOPS[chip] * 1e12
    chip_out = {f'train_step_s/{name}': flops / rate
                for name, flops in result['train_step_flops'].items()}
    if 'sample_flops_G' in result:
      chip_out['sample_ms_G'] = 1e3 * result['sample_flops_G'] / rate
    if 'sample_flops_vae_decode' in result:
      chip_out['sample_ms_vae_decode'] = 1e3 * result['sample_flops_vae_decode'] / rate
    out[f'{chip} @ {ESTIMATE_MFU:.0%} MFU'] = chip_out
  return out


def main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('out', '', 'Also write the numbers to this JSON file.')
  flags.DEFINE_bool('memory', False, "Also compile each phase's step and report XLA's memory "
                    'analysis per device (slow for large configs).')
  flags.mark_flags_as_required(['config'])

  def run(_):
    result = step_cost(flags.FLAGS.config, memory=flags.FLAGS.memory)
    text = files.json_text(result, 'step cost')
    print(text)
    if flags.FLAGS.out:
      Path(flags.FLAGS.out).write_text(text)

  app.run(run, argv=argv or sys.argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
