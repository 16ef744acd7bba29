"""Transformer pieces shared by the flow F and the generator G.

Attention keeps an explicit key/value cache (a pytree passed in and returned) so the
serial exact inverse can run inside `lax.fori_loop` as a pure function.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# PyTorch's LayerNorm epsilon: keeps parity with TARFlow checkpoints.
LAYER_NORM_EPS = 1e-5

#: config.model.dtype (and G's): compute dtypes by name.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def resolve_dtype(name: str | Any) -> Any:
  """Config string ('bfloat16') or dtype -> dtype; unknown names are a clear error."""
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f'unknown compute dtype {name!r}; use one of {sorted(DTYPES)}')
    return DTYPES[name]
  return name


def patchify(x: Array, patch_size: int) -> Array:
  """NHWC image -> (N, T, p*p*C) tokens.

  Tokens are row-major over patch positions and each token's features are ordered
  (channel, dy, dx): torch's `unfold` order, so TARFlow checkpoints line up.
  """
  n, h, w, c = x.shape
  p = patch_size
  x = x.reshape(n, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)  # n, gh, gw, c, dy, dx
  return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Array, image_shape: tuple[int, int, int], patch_size: int) -> Array:
  """Inverse of `patchify`: (N, T, p*p*C) -> NHWC."""
  h, w, c = image_shape
  p = patch_size
  n = tokens.shape[0]
  x = tokens.reshape(n, h // p, w // p, c, p, p)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # n, gh, dy, gw, dx, c
  return x.reshape(n, h, w, c)


def causal_mask(length: int) -> Array:
  return jnp.tril(jnp.ones((length, length), dtype=bool))


def init_kv_cache(batch: int, length: int, num_layers: int, num_heads: int,
                  head_dim: int, dtype: Dtype) -> list[tuple[Array, Array]]:
  """One (keys, values) pair per layer, each (batch, length, heads, head_dim)."""
  shape = (batch, length, num_heads, head_dim)
  return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers)]


class Attention(nn.Module):
  """Pre-norm multi-head self-attention.

  `qkv` output features are ordered (3, heads, head_dim) as in TARFlow.
  `temperature` divides the logits (TARFlow's attention temperature).
  """
  width: int
  num_heads: int
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
    self.norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32)
    self.qkv = nn.Dense(3 * self.width, dtype=self.dtype)
    self.proj = nn.Dense(self.width, dtype=self.dtype)

  def _project_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    x = self.norm(x.astype(jnp.float32)).astype(self.dtype)
    qkv = self.qkv(x).reshape(*x.shape[:-1], 3, self.num_heads, self.width // self.num_heads)
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

  def _attend(self, q: Array, k: Array, v: Array, mask: Array | None, temperature) -> Array:
    head_dim = q.shape[-1]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    logits = logits / (jnp.sqrt(jnp.float32(head_dim)) * temperature)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(self.dtype))
    return self.proj(out.reshape(*out.shape[:2], self.width))

  def __call__(self, x: Array, mask: Array | None = None, temperature=1.0) -> Array:
    q, k, v = self._project_qkv(x)
    return self._attend(q, k, v, mask, temperature)

  def decode(self, x_t: Array, t: Array, cache: tuple[Array, Array],
             temperature=1.0) -> tuple[Array, tuple[Array, Array]]:
    """One new token at position t (x_t: (B, 1, C)) against the cached keys/values."""
    q, k, v = self._project_qkv(x_t)
    keys, values = cache
    keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), t, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), t, axis=1)
    mask = (jnp.arange(keys.shape[1]) <= t)[None, None, None, :]
    return self._attend(q, keys, values, mask, temperature), (keys, values)


class MLP(nn.Module):
  """Pre-norm GELU MLP (exact erf GELU, as TARFlow)."""
  ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, name='norm')(x.astype(jnp.float32))
    h = nn.Dense(c * self.ratio, dtype=self.dtype, name='fc1')(h.astype(self.dtype))
    h = nn.gelu(h, approximate=False)
    return nn.Dense(c, dtype=self.dtype, name='fc2')(h)


class TransformerLayer(nn.Module):
  """x + Attn(LN(x)); x + MLP(LN(x))."""
  width: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  def setup(self):
    self.attn = Attention(self.width, self.num_heads, dtype=self.dtype)
    self.mlp = MLP(self.mlp_ratio, dtype=self.dtype)

  def __call__(self, x: Array, mask: Array | None = None, temperature=1.0) -> Array:
    x = x + self.attn(x, mask, temperature)
    return x + self.mlp(x)

  def decode(self, x_t: Array, t: Array, cache, temperature=1.0):
    h, cache = self.attn.decode(x_t, t, cache, temperature)
    x_t = x_t + h
    return x_t + self.mlp(x_t), cache
