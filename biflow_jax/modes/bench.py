"""Sampling and training throughput, measured in one run so ratios are meaningful.

Times are medians over repeats, after compilation, with block_until_ready. Uses the
latest checkpoint in the workdir when there is one (fixed-point iteration counts
depend on the trained weights), otherwise freshly initialised weights (stated).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from biflow_jax.inference import decoders
from biflow_jax.models.flow import ForwardFlow, score_denoise
from biflow_jax.runtime import files, parallel, tables
from biflow_jax.training import checkpoints
from biflow_jax.training.experiment import build_experiment, example_batch
# The timing primitives live in a module of their own (no data or config stack), so the
# device benchmark imports them on a bare jax image.
from biflow_jax.runtime.timing import (flops_of, memory_of, peak_memory_bytes, peak_tflops,
                                       time_fn)


def decoder_timings(flow: ForwardFlow, forward_params, batch: int, guidance: float = 0.0,
                    tol: float = 1e-3, num_groups: int = 1, sigma: float = 0.1,
                    repeats: int = 5, seed: int = 0) -> dict:
  """ms/image of the exact (serial) inverse, the fixed-point inverse (Gauss-Seidel-Jacobi,
  with its KV cache of solved groups: the implementation sampling uses), the same without
  the cache (every sweep recomputes the prefix) and score denoising, with their ratios."""
  variables = {'params': forward_params}
  z = jax.random.normal(jax.random.PRNGKey(seed), (batch, flow.num_tokens, flow.token_dim))
  y = (jnp.arange(batch) % flow.num_classes).astype(jnp.int32) if flow.num_classes else None

  exact = jax.jit(lambda v, z, y: flow.apply(v, z, y, method=ForwardFlow.inverse,
                                             guidance=guidance))
  fixed, uncached = (
      jax.jit(lambda v, z, y, kv_cache=kv_cache: flow.apply(
          v, z, y, method=ForwardFlow.inverse, mode='fixed_point', guidance=guidance, tol=tol,
          num_groups=num_groups, kv_cache=kv_cache))
      for kv_cache in (True, False))
  denoise = jax.jit(lambda v, x, y: score_denoise(flow, v, x, y, sigma))

  x_exact = exact(variables, z, y)
  x_fixed, iters, residual = fixed(variables, z, y)
  x_uncached, iters_uncached, _ = uncached(variables, z, y)
  t_exact = time_fn(lambda: exact(variables, z, y), repeats)
  t_fixed = time_fn(lambda: fixed(variables, z, y), repeats)
  t_uncached = time_fn(lambda: uncached(variables, z, y), repeats)
  t_denoise = time_fn(lambda: denoise(variables, x_exact, y), repeats)
  ms = lambda t: 1e3 * t / batch
  return {
      'batch': batch, 'guidance': guidance,
      'exact_ms_per_image': ms(t_exact),
      'fixed_point_ms_per_image': ms(t_fixed),
      'fixed_point_tol': tol, 'fixed_point_groups': num_groups,
      'fixed_point_iterations_per_block': np.asarray(iters).tolist(),
      'fixed_point_max_residual': float(np.max(residual)),
      'fixed_point_max_abs_diff_vs_exact': float(jnp.max(jnp.abs(x_fixed - x_exact))),
      'fixed_point_uncached_ms_per_image': ms(t_uncached),
      'fixed_point_uncached_iterations_per_block': np.asarray(iters_uncached).tolist(),
      'fixed_point_max_abs_diff_cached_vs_uncached': float(jnp.max(jnp.abs(x_fixed
                                                                           - x_uncached))),
      'speedup_fixed_point_cache_vs_uncached': t_uncached / t_fixed,
      'speedup_fixed_point_uncached_vs_exact': t_exact / t_uncached,
      'score_denoise_ms_per_image': ms(t_denoise),
      'speedup_fixed_point_vs_exact': t_exact / t_fixed,
      'serial_steps_exact': flow.num_tokens * flow.num_blocks,
  }


def reverse_timing(generator, reverse_params, flow: ForwardFlow, batch: int, guidance: float = 0.0,
                   repeats: int = 5, seed: int = 0) -> dict:
  """ms/image of G's single forward pass (1 NFE) on the same noise shape."""
  z = jax.random.normal(jax.random.PRNGKey(seed), (batch, flow.num_tokens, flow.token_dim))
  y = (jnp.arange(batch) % flow.num_classes).astype(jnp.int32) if flow.num_classes else None
  w = jnp.full((batch,), guidance, jnp.float32)
  run = jax.jit(lambda p, z, y, w: generator.apply({'params': p}, z, y, w)[0])
  return {'reverse_ms_per_image': 1e3 * time_fn(lambda: run(reverse_params, z, y, w), repeats) / batch}


def train_step_timing(config, state, step_fn, args: tuple, repeats: int = 5,
                      peak: float | None = None) -> dict:
  """ms per train step, examples/s, and MFU from the compiled FLOPs and the chip's peak.

  step_fn(state, *args) -> (state, metrics); it may donate the state (each call's output
  state is the next call's input).
  """
  holder = {'state': state}
  compiled = step_fn.lower(state, *args).compile()
  flops, memory = flops_of(compiled), memory_of(compiled)

  def run():
    holder['state'], metrics = step_fn(holder['state'], *args)
    return metrics

  t = time_fn(run, repeats)
  result = {'train_step_ms': 1e3 * t, 'train_examples_per_sec': config.batch_size / t,
            'train_step_tflops': None if flops is None else flops / 1e12,
            'train_achieved_tflops_per_sec': None if flops is None else flops / t / 1e12,
            'peak_tflops': peak, 'mfu': None, 'train_step_memory_bytes': memory}
  if flops is not None and peak:
    result['mfu'] = flops / t / (peak * 1e12)
  return result


def run(config, workdir: epath.PathLike, batch: int | None = None) -> dict:
  """`--mode=bench`: decoder and train-step timings -> DIR/bench.json and a table.

  The train step timed is the experiment's own (`build_experiment`): the jitted, sharded
  step that training runs, on a global batch laid out on the same mesh, for the plan's
  first phase. Every process of a multi-process job runs the same timed programs; process
  0 alone writes bench.json (the workdir may be gs://: paths go through etils.epath).
  """
  workdir = epath.Path(workdir)
  if parallel.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
  exp = build_experiment(config)
  flow = exp.models.flow
  state = exp.create_state()
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  weights = 'random init (no checkpoint in workdir)'
  if manager.latest_step() is not None:
    state, step = checkpoints.restore(manager, exp.abstract_state)
    weights = f'checkpoint step {step} (EMA)'
  manager.close()
  s = config.sample
  result = {'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
            'weights': weights}
  repeats = int(config.bench.repeats)
  batch = batch or int(config.bench.batch) or s.num
  result.update(decoder_timings(flow, state.ema['forward'], batch,
                                guidance=float(s.guidance), tol=float(s.fixed_point_tol),
                                num_groups=int(s.fixed_point_groups),
                                sigma=float(config.objective.noise_sigma), repeats=repeats))
  if exp.models.generator is not None:
    result.update(reverse_timing(exp.models.generator, state.ema['reverse'], flow, batch,
                                 guidance=decoders.reverse_guidance(config), repeats=repeats))
    result['speedup_reverse_vs_exact'] = (result['exact_ms_per_image']
                                          / result['reverse_ms_per_image'])
  train_batch = exp.global_batch({k: v[exp.process_rows()]
                                  for k, v in example_batch(config).items()})
  # Frozen weights are an argument of the step, not compiled-in constants.
  args = (train_batch, exp.frozen_params, exp.plan[0])
  peak = peak_tflops(result['device'], float(config.bench.peak_tflops))
  result.update(train_step_timing(config, state, exp.step, args, repeats, peak))
  result['peak_memory_bytes'] = peak_memory_bytes()
  if parallel.is_main_process():
    (workdir / 'bench.json').write_text(files.json_text(result, 'bench.json'))
    print(format_table(result))
    logging.info('wrote %s', workdir / 'bench.json')
  return result


def format_table(result: dict) -> str:
  rows = [('decoder', 'ms / image', 'speed-up vs exact', 'notes')]
  if 'reverse_ms_per_image' in result:
    rows.append(('BiFlow reverse model G (1 NFE)', f"{result['reverse_ms_per_image']:.3f}",
                 f"{result['speedup_reverse_vs_exact']:.1f}x", 'one forward pass'))
  rows += [
      ('exact inverse (KV cache)', f"{result['exact_ms_per_image']:.3f}", '1.0x',
       f"{result['serial_steps_exact']} serial steps"),
      ('fixed-point inverse (GSJ, KV cache)', f"{result['fixed_point_ms_per_image']:.3f}",
       f"{result['speedup_fixed_point_vs_exact']:.2f}x",
       f"{result['fixed_point_groups']} groups, tol {result['fixed_point_tol']:g}, "
       f"iters/block {result['fixed_point_iterations_per_block']}; "
       f"{result['speedup_fixed_point_cache_vs_uncached']:.2f}x the uncached"),
      ('fixed-point inverse (GSJ, no cache)',
       f"{result['fixed_point_uncached_ms_per_image']:.3f}",
       f"{result['speedup_fixed_point_uncached_vs_exact']:.2f}x",
       'recomputes the prefix per sweep'),
      ('score denoising (extra)', f"{result['score_denoise_ms_per_image']:.3f}", '', 'fwd+bwd of F')]
  lines = tables.aligned(rows)
  mfu = result.get('mfu')
  mfu_text = (f"MFU {100 * mfu:.1f}% of {result['peak_tflops']:g} TFLOP/s" if mfu is not None
              else 'MFU n/a (unknown peak: set --config.bench.peak_tflops)')
  compiled = result.get('train_step_memory_bytes')
  if compiled:
    lines.append('train step memory per device (XLA analysis): ' + ', '.join(
        f'{k} {v / 2**30:.3f} GiB' for k, v in compiled.items() if k != 'generated_code'))
  memory = result.get('peak_memory_bytes')
  lines.append(f"train step: {result['train_step_ms']:.1f} ms "
               f"({result['train_examples_per_sec']:.1f} examples/s), {mfu_text}; "
               f"peak memory {'n/a' if memory is None else f'{memory / 2**30:.2f} GiB'}; "
               f"device {result['device']}; weights: {result['weights']}")
  return '\n'.join(lines)
