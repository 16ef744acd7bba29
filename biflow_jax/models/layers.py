"""Transformer pieces shared by the flow F and the generator G.

Attention keeps an explicit key/value cache (a pytree passed in and returned) so the
serial exact inverse can run inside `lax.fori_loop` as a pure function.

Attention implementations (`model.attention`, `reverse.attention`; `attend`):
- 'einsum': the hand-written softmax(q k^T / (sqrt(d) temperature)) v. The default: the
  CPU configs' numbers were produced by it, and it stays bit for bit what it was.
- 'xla': `jax.nn.dot_product_attention(implementation='xla')`, XLA's own attention
  (the same maths, float32 softmax; equal to 'einsum' within float re-association).
- 'cudnn': the same call with cuDNN's fused flash-attention kernel (GPU, bf16/fp16 only).
- 'auto': 'cudnn' on a GPU when the compute dtype is bf16/fp16, else 'xla'.
The KV-cache decode step (one query row against the cache) uses 'xla' under every
fused choice: a single query row is bandwidth-bound and gains nothing from a fused kernel.
"""
from __future__ import annotations

import math
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


#: config.perceptual.precision / config.vae.precision: matmul and conv precision of the
#: frozen nets by name. 'highest' is true float32 on every backend; 'default' lets a GPU
#: use TF32 / a TPU bf16 passes (fast, about 3 significant digits).
PRECISIONS = {'highest': jax.lax.Precision.HIGHEST, 'high': jax.lax.Precision.HIGH,
              'default': jax.lax.Precision.DEFAULT}


def resolve_precision(name: str | Any) -> Any:
  """Config string ('highest') or jax.lax.Precision -> jax.lax.Precision; unknown names
  are a clear error."""
  if isinstance(name, str):
    if name not in PRECISIONS:
      raise ValueError(f'unknown matmul precision {name!r}; use one of {sorted(PRECISIONS)}')
    return PRECISIONS[name]
  return name


ATTENTION_IMPLS = ('einsum', 'xla', 'cudnn', 'auto')


def check_attention_impl(impl: str) -> str:
  """`impl` if it is one of ATTENTION_IMPLS, else a ValueError naming the choices."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'unknown attention implementation {impl!r}; use one of {ATTENTION_IMPLS} '
                     '(config.model.attention / config.reverse.attention)')
  return impl


def _fused_impl(impl: str, dtype) -> str:
  """The `implementation=` given to jax.nn.dot_product_attention for a fused choice."""
  if impl == 'auto':
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return 'cudnn' if jax.default_backend() == 'gpu' and half else 'xla'
  return impl


def attend(q: Array, k: Array, v: Array, *, impl: str = 'einsum', causal: bool = False,
           kv_length: Array | None = None, q_offset: Array | None = None, temperature=1.0,
           dtype: Dtype = jnp.float32) -> Array:
  """Multi-head attention weights applied to v; (B, Tq, H, d) x (B, S, H, d)^2 -> (B, Tq, H, d).

  causal: query i sees keys <= i (Tq == S). kv_length: a scalar, only keys < kv_length
  are seen (the KV-cache decode step). q_offset: a scalar, the queries sit at positions
  q_offset + i of the keys and each sees the keys at or before its position (a chunk of
  tokens decoded against a KV cache). Logits are divided by sqrt(d) * temperature; the
  softmax runs in float32, the two matmuls in `dtype`. `impl` is one of ATTENTION_IMPLS.
  """
  check_attention_impl(impl)
  head_dim = q.shape[-1]
  q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  if impl == 'einsum':
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    logits = logits / (jnp.sqrt(jnp.float32(head_dim)) * temperature)
    mask = None
    if causal:
      mask = causal_mask(q.shape[1])
    elif kv_length is not None:
      mask = (jnp.arange(k.shape[1]) < kv_length)[None, None, None, :]
    elif q_offset is not None:
      mask = _chunk_mask(q.shape[1], k.shape[1], q_offset)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v)
  scale = 1.0 / math.sqrt(head_dim)
  if isinstance(temperature, (int, float)):
    scale /= float(temperature)  # a static scale: what cuDNN's kernel takes
  else:  # a traced temperature scales the queries instead
    q = (q / jnp.asarray(temperature, jnp.float32)).astype(dtype)
  lengths, mask = None, None
  implementation = _fused_impl(impl, dtype)
  if kv_length is not None:
    lengths = jnp.full((q.shape[0],), kv_length, jnp.int32)
    implementation = 'xla'  # one query row: nothing for a fused kernel to fuse
  elif q_offset is not None:
    mask = _chunk_mask(q.shape[1], k.shape[1], q_offset)
    implementation = 'xla'  # an offset causal mask: XLA's path takes any mask
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                                      key_value_seq_lengths=lengths,
                                      implementation=implementation)


def _chunk_mask(num_queries: int, num_keys: int, offset: Array) -> Array:
  """(1, 1, Tq, S) bool: query i (at position offset + i) sees keys at positions <= its own."""
  return (jnp.arange(num_keys)[None, :] <= offset + jnp.arange(num_queries)[:, None])[None, None]


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
                  head_dim: int, dtype: Dtype, stacked: bool = False):
  """One (keys, values) pair per layer, each (batch, length, heads, head_dim); with
  `stacked` (scanned layers) one pair of (num_layers, batch, length, heads, head_dim)."""
  if stacked:
    shape = (num_layers, batch, length, num_heads, head_dim)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
  shape = (batch, length, num_heads, head_dim)
  return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(num_layers)]


#: config.model.remat / config.reverse.remat: what a rematerialised layer keeps for the
#: backward pass ('none' = no remat; 'full' = only its input; 'dots' = matmul outputs
#: without batch dimensions, i.e. the weight matmuls, recomputing attention and
#: elementwise ops; 'dots_all' = every matmul output).
REMAT_POLICIES = ('none', 'full', 'dots', 'dots_all')


def remat_policy(name: str):
  """The jax.checkpoint policy of a REMAT_POLICIES name ('none' -> None: no remat)."""
  policies = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
              'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
              'dots_all': jax.checkpoint_policies.dots_saveable}
  if name not in policies:
    raise ValueError(f'unknown remat policy {name!r}; use one of {REMAT_POLICIES} '
                     '(config.model.remat / config.reverse.remat)')
  return policies[name]


def stack_of(cls, num_layers: int, scan: bool, remat: str, in_axes=0):
  """(module class, is_scanned) for a stack of `cls` layers whose call is
  (carry, xs, *broadcast) -> (carry, ys): cls itself, its nn.remat (policy `remat`), and
  with `scan` its nn.scan over `num_layers` (params stacked on a new leading axis).
  `in_axes` is the scan axis spec of the call's non-carry arguments."""
  policy = remat_policy(remat)
  body = cls
  if remat != 'none':
    # Under scan, CSE cannot merge the recomputation across iterations: no barrier needed.
    body = nn.remat(cls, policy=policy, prevent_cse=not scan)
  if scan:
    body = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True},
                   in_axes=in_axes, length=num_layers)
  return body


class Attention(nn.Module):
  """Pre-norm multi-head self-attention.

  `qkv` output features are ordered (3, heads, head_dim) as in TARFlow.
  `temperature` divides the logits (TARFlow's attention temperature).
  """
  width: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'  # one of ATTENTION_IMPLS

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

  def _out(self, out: Array) -> Array:
    return self.proj(out.reshape(*out.shape[:2], self.width))

  def __call__(self, x: Array, causal: bool = True, temperature=1.0) -> Array:
    """x: (B, T, width); causal attention (F's blocks) unless causal=False."""
    q, k, v = self._project_qkv(x)
    return self._out(attend(q, k, v, impl=self.attention, causal=causal,
                            temperature=temperature, dtype=self.dtype))

  def decode(self, x_t: Array, t: Array, cache: tuple[Array, Array],
             temperature=1.0) -> tuple[Array, tuple[Array, Array]]:
    """New tokens at positions t, t+1, ... (x_t: (B, s, C)) against the cached keys/values
    (written at those positions, causally masked); s = 1 is the serial decode step."""
    q, k, v = self._project_qkv(x_t)
    keys, values = cache
    keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), t, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), t, axis=1)
    if x_t.shape[1] == 1:
      out = attend(q, keys, values, impl=self.attention, kv_length=t + 1,
                   temperature=temperature, dtype=self.dtype)
    else:
      out = attend(q, keys, values, impl=self.attention, q_offset=t,
                   temperature=temperature, dtype=self.dtype)
    return self._out(out), (keys, values)


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
  attention: str = 'einsum'

  def setup(self):
    self.attn = Attention(self.width, self.num_heads, dtype=self.dtype, attention=self.attention)
    self.mlp = MLP(self.mlp_ratio, dtype=self.dtype)

  def __call__(self, x: Array, causal: bool = True, temperature=1.0) -> Array:
    x = x + self.attn(x, causal, temperature)
    return x + self.mlp(x)

  def decode(self, x_t: Array, t: Array, cache, temperature=1.0):
    h, cache = self.attn.decode(x_t, t, cache, temperature)
    x_t = x_t + h
    return x_t + self.mlp(x_t), cache


class StackLayer(TransformerLayer):
  """A causal TransformerLayer with the (carry, xs, *broadcast) call of a scanned stack:
  (h, None, None, temperature) -> (h', None) runs every token; (h_t, cache, t,
  temperature) -> (h_t', cache') is the KV-cache decode step at position t."""

  def __call__(self, h: Array, cache=None, t: Array | None = None, temperature=1.0):
    if cache is None:
      return TransformerLayer.__call__(self, h, True, temperature), None
    return self.decode(h, t, cache, temperature)
