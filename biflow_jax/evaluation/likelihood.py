"""Held-out likelihood of F: NLL per dimension (nats) and bits/dim of x~ = x + sigma * eps.

Fixed noise (EVAL_NOISE_SEED) and true labels, so numbers are comparable across steps
and runs with the same sigma; see `primitives.py` for what bits/dim means at sigma > 0.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from biflow_jax.data import input_pipeline
from biflow_jax.models.flow import ForwardFlow, base_nll
from biflow_jax.objective import biflow, frozen, primitives
from biflow_jax.runtime import parallel

EVAL_NOISE_SEED = 1234


@functools.partial(jax.jit, static_argnames=('flow', 'sigma', 'scaling_factor'))
def _heldout_nll(params, batch, rng, *, flow: ForwardFlow, sigma: float,
                 scaling_factor: float = 1.0) -> jax.Array:
  """Per-example NLL of x~; module-level so periodic evaluations reuse one compilation."""
  _, x_noisy, y = biflow.noisy_inputs(batch, rng, sigma, 0.0, flow.num_classes, scaling_factor)
  z, logdet, _ = flow.apply({'params': params}, x_noisy, y)
  return base_nll(flow, z, logdet)


def examples_used(num_heldout: int, config) -> int:
  """How many of `num_heldout` held-out examples (in order) `heldout_nll_per_dim` scores:
  the first config.eval_batches full batches of config.batch_size."""
  return min(int(config.eval_batches), num_heldout // int(config.batch_size)) * int(
      config.batch_size)


def heldout_nll_per_dim(flow: ForwardFlow, forward_params, heldout: dict, config,
                        mesh=None) -> float:
  """Mean NLL per dimension (nats) of x~ over the first config.eval_batches batches of
  `heldout` (fixed noise, true labels). `heldout` comes from `input_pipeline.load_heldout`,
  whose order makes those batches class-balanced (or a random sample), never the first
  classes of ordered storage.

  With a mesh, each batch is split over its devices (every process takes its rows of
  the held-out arrays it has in memory) and every process must call this.
  Raises ValueError when `heldout` holds less than one batch.
  """
  sigma = float(config.objective.noise_sigma)
  nlls = []
  rows = None if mesh is None else parallel.process_rows(mesh, config.batch_size)
  batches = input_pipeline.heldout_batches(heldout, config.batch_size)
  for i, batch in enumerate(batches):
    if i >= config.eval_batches:
      break
    if mesh is not None:
      batch = parallel.global_batch({k: v[rows] for k, v in batch.items()}, mesh,
                                    config.batch_size)
    nlls.append(parallel.to_host(_heldout_nll(
        forward_params, batch, jax.random.PRNGKey(EVAL_NOISE_SEED + i), flow=flow,
        sigma=sigma, scaling_factor=float(config.vae.scaling_factor))))
  if not nlls:
    raise ValueError(f'held-out set has fewer than batch_size={config.batch_size} examples')
  return float(np.mean(np.concatenate(nlls))) / flow.num_dims


def heldout_metrics(flow: ForwardFlow, forward_params, heldout: dict, config, mesh=None) -> dict:
  """What the periodic evaluation logs: 'heldout/nll_per_dim' (nats), and for pixel data
  'heldout/bits_per_dim' (8-bit bins)."""
  nll = heldout_nll_per_dim(flow, forward_params, heldout, config, mesh)
  metrics = {'heldout/nll_per_dim': nll}
  if not frozen.uses_latents(config) and 'values' not in heldout:  # 8-bit bins: pixels only
    metrics['heldout/bits_per_dim'] = float(primitives.bits_per_dim(nll * flow.num_dims,
                                                                    flow.num_dims))
  return metrics


def heldout_bits_per_dim(flow: ForwardFlow, forward_params, heldout: dict, config,
                         mesh=None) -> float:
  """Mean bits/dim of x~ over the held-out set (pixel data)."""
  return heldout_metrics(flow, forward_params, heldout, config, mesh)['heldout/bits_per_dim']
