"""Losses. This file holds the likelihood side; the reverse-model terms join it later.

Likelihood accounting (written once, used everywhere):

F maps the noisy image x~ (continuous, in [-1, 1] plus noise) to z with a prior
N(0, I) over its N = T * D = H * W * C dimensions. Change of variables gives the exact
negative log-density of x~ in nats:

    NLL(x~) = 0.5 * ||z||^2 + (N / 2) * log(2 * pi) - log|det dz/dx~|.

Bits per dimension translate that density into 8-bit units: 8-bit pixels k are mapped
to x = k / 127.5 - 1, so neighbouring levels lie a bin width w = 2/255 apart in
x-space, and a density p on x-space puts probability ~ p * w^N on one bin:

    bits/dim = (NLL / N - log(w)) / log(2) = (NLL / N + log(127.5)) / log(2).

With *uniform* dequantisation noise of exactly one bin this is an upper bound on the
discrete negative log-likelihood (the usual convention). With the Gaussian noise
augmentation BiFlow trains on (x~ = x + sigma * eps) it is the continuous density of x~
in the same units: comparable across runs with the same sigma, not a lossless code
length. We report it as such and always state sigma beside it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_BIN_WIDTH = 2.0 / 255.0  # x = k / 127.5 - 1 for 8-bit k


def gaussian_nll(z: Array, logdet: Array) -> Array:
  """Per-sample NLL in nats of the input F mapped to z (batch, ...), float32."""
  z = z.astype(jnp.float32).reshape(z.shape[0], -1)
  n = z.shape[1]
  return 0.5 * jnp.sum(z * z, axis=1) + 0.5 * n * math.log(2 * math.pi) - logdet.astype(jnp.float32)


def bits_per_dim(nll: Array, num_dims: int, bin_width: float = DEFAULT_BIN_WIDTH) -> Array:
  """Nats per sample -> bits per dimension of data quantised into bins of `bin_width`."""
  return (nll / num_dims - math.log(bin_width)) / math.log(2.0)
