"""The forward flow F (iTARFlow): data -> noise by a stack of causal affine blocks.

Block i puts the tokens in its own order (identity for even i, reversed for odd i; the
position embedding is permuted with them), runs a causal pre-norm Transformer and a
zero-initialised head whose output at position t-1 gives (a_t, b_t) for token t, then

    x'_t = (x_t - b_t) * exp(-a_t),   log|det| = -sum_t,k a_{t,k}.

Token 0 gets a = b = 0. Norm control bounds a and b by `clip`: 'hard' clips them to
[-clip, clip] (the paper's norm control); 'tanh' maps u -> clip * tanh(u / clip), the soft
clip of STARFlow (Gu et al. 2025), which is the identity to first order near 0 and keeps a
gradient where the hard clip has none. Everything returned to the caller (tokens,
trajectory) is in the original token order.

Inverting F (`ForwardFlow.inverse`):
- 'exact': serial over tokens inside `lax.fori_loop`, with a key/value cache, so each
  step costs O(t); T * B serial steps in all.
- 'fixed_point': Jacobi over all tokens in parallel (num_groups=1) or Gauss-Seidel-
  Jacobi over groups; by causality a group of s tokens is exact after s sweeps.
Both take TARFlow-style guidance: a <- a + g (a - a_uncond), the same for b, where the
unconditional pass uses label -1 (the mean class embedding) and the attention
temperature (as TARFlow applies it).

Prior variance (`prior_var=True`): TARFlow keeps a buffer `var` (T, D) and samples
x = F^-1(sqrt(var) * eps), i.e. its prior is N(0, diag(var)). F folds it in exactly as a
last, fixed elementwise layer z <- z / sqrt(var) (log|det| -= 0.5 sum log var), so F's
own N(0, I) prior gives the same density and F^-1(eps) the same samples. `var` is held
in params under that name but its gradient is stopped: training never changes it.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax.models import base_density, layers

Array = jax.Array

# Fixed-point iterates are kept within +-_ITERATE_BOUND (see _fixed_point_block_inverse).
_ITERATE_BOUND = 1e6

# How `clip` bounds F's (a, b): 'hard' is the paper's clip, 'tanh' STARFlow's soft clip.
CLIP_FORMS = ('hard', 'tanh')


def bound(u: Array, clip: float, form: str = 'hard') -> Array:
  """u bounded by clip, elementwise: jnp.clip to [-clip, clip] for 'hard'; clip *
  tanh(u / clip) for 'tanh' (STARFlow's soft clip: slope 1 at 0, and a non-zero gradient
  past the bound until float32's tanh saturates, by |u| = 8 clip). ValueError for a form
  not in CLIP_FORMS."""
  check_clip_form(form)
  if form == 'hard':
    return jnp.clip(u, -clip, clip)
  return clip * jnp.tanh(u / clip)


def check_clip_form(form: str) -> None:
  """ValueError naming model.clip_form unless `form` is one of CLIP_FORMS."""
  if form not in CLIP_FORMS:
    raise ValueError(f'model.clip_form={form!r} is not one of {CLIP_FORMS}')


def _no_guidance(guidance) -> bool:
  """Static check: a Python zero skips the unconditional pass entirely."""
  return isinstance(guidance, (int, float)) and guidance == 0


def _guide(cond: Array, uncond: Array, guidance) -> Array:
  return cond + guidance * (cond - uncond)


def flip(x: Array, reverse, axis: int = 1) -> Array:
  """x reversed along `axis` when `reverse`; a Python bool decides statically, a traced
  one (the block scan's order flag) selects at run time."""
  if isinstance(reverse, (bool, np.bool_)):
    return jnp.flip(x, axis) if reverse else x
  return jnp.where(reverse, jnp.flip(x, axis), x)


class FlowBlock(nn.Module):
  """One causal affine block f_i. Inputs and outputs are in the original token order.

  The token order is `reverse_order` unless a method is given `reverse` (a Python or
  traced bool: scanned blocks share one definition and get their order as data).
  scan: the layers are one nn.scan (params stacked on a leading axis of num_layers);
  remat: layers.REMAT_POLICIES name.
  """
  num_tokens: int
  token_dim: int
  channels: int
  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  num_classes: int = 0
  reverse_order: bool = False
  clip: float | None = None
  clip_form: str = 'hard'  # CLIP_FORMS
  dtype: Any = jnp.float32
  attention: str = 'einsum'
  scan: bool = False
  remat: str = 'none'

  def setup(self):
    init = nn.initializers.normal(stddev=0.01)
    self.proj_in = nn.Dense(self.channels, dtype=self.dtype)
    self.pos_embed = self.param('pos_embed', init, (self.num_tokens, self.channels))
    if self.num_classes:
      self.class_embed = self.param('class_embed', init, (self.num_classes, self.channels))
    stack = layers.stack_of(layers.StackLayer, self.num_layers, self.scan, self.remat,
                            in_axes=(0, nn.broadcast, nn.broadcast))
    kw = dict(width=self.channels, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
              dtype=self.dtype, attention=self.attention)
    self.layers = stack(**kw) if self.scan else [stack(**kw) for _ in range(self.num_layers)]
    self.proj_out = nn.Dense(2 * self.token_dim, dtype=self.dtype,
                             kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

  # -- ordering and conditioning ------------------------------------------------------
  def _order(self, reverse):
    return self.reverse_order if reverse is None else reverse

  def permute(self, x: Array, reverse=None) -> Array:
    """Original order <-> block order (its own inverse), along the token axis 1."""
    return flip(x, self._order(reverse), axis=1)

  def _positions(self, reverse=None) -> Array:
    return flip(self.pos_embed, self._order(reverse), axis=0)

  def _condition(self, y: Array | None) -> Array | float:
    """(B, 1, C) class embedding; label -1 (or y=None) is the mean embedding."""
    if not self.num_classes:
      return 0.0
    mean = jnp.mean(self.class_embed, axis=0)
    if y is None:
      return mean[None, None]
    emb = jnp.take(self.class_embed, jnp.maximum(y, 0), axis=0)
    return jnp.where((y < 0)[:, None], mean[None], emb)[:, None, :]

  def _head(self, h: Array) -> tuple[Array, Array]:
    out = self.proj_out(h).astype(jnp.float32)
    a, b = jnp.split(out, 2, axis=-1)
    if self.clip is not None:
      a, b = bound(a, self.clip, self.clip_form), bound(b, self.clip, self.clip_form)
    return a, b

  def _run_layers(self, h: Array, cache, t, temperature):
    if self.scan:
      return self.layers(h, cache, t, temperature)
    new_cache = None if cache is None else []
    for j, layer in enumerate(self.layers):
      h, layer_cache = layer(h, None if cache is None else cache[j], t, temperature)
      if cache is not None:
        new_cache.append(layer_cache)
    return h, new_cache

  # -- parallel (training / fixed point) ----------------------------------------------
  def shift_params(self, x_perm: Array, y: Array | None, temperature=1.0,
                   reverse=None) -> tuple[Array, Array]:
    """(a, b) for every token of x_perm (block order, any prefix length <= T)."""
    length = x_perm.shape[1]
    h = (self.proj_in(x_perm.astype(self.dtype)) + self._positions(reverse)[:length]
         + self._condition(y))
    h = h.astype(self.dtype)
    h, _ = self._run_layers(h, None, None, temperature)
    a, b = self._head(h)
    zero = jnp.zeros_like(a[:, :1])
    return (jnp.concatenate([zero, a[:, :-1]], axis=1),
            jnp.concatenate([zero, b[:, :-1]], axis=1))

  def __call__(self, x: Array, y: Array | None = None, reverse=None) -> tuple[Array, Array]:
    x = self.permute(x.astype(jnp.float32), reverse)
    a, b = self.shift_params(x, y, reverse=reverse)
    z = (x - b) * jnp.exp(-a)
    return self.permute(z, reverse), -jnp.sum(a, axis=(1, 2))

  # -- serial (exact inverse) ---------------------------------------------------------
  def init_cache(self, batch: int):
    return layers.init_kv_cache(batch, self.num_tokens, self.num_layers, self.num_heads,
                                self.channels // self.num_heads, self.dtype, stacked=self.scan)

  def decode_step(self, x_t: Array, t: Array, y: Array | None, cache, temperature=1.0,
                  reverse=None):
    """Feed tokens t, ..., t+s-1 (block order, (B, s, D)); get (a, b) for tokens t+1..t+s.
    The cache must hold the tokens before t; theirs are written into it."""
    pos = jax.lax.dynamic_slice_in_dim(self._positions(reverse), t, x_t.shape[1], axis=0)
    h = (self.proj_in(x_t.astype(self.dtype)) + pos + self._condition(y)).astype(self.dtype)
    h, cache = self._run_layers(h, cache, t, temperature)
    return self._head(h), cache


class _ScannedBlock(FlowBlock):
  """FlowBlock with nn.scan's call: (tokens, reverse flag, y) -> (tokens', (tokens', logdet))."""

  def __call__(self, x: Array, reverse=None, y: Array | None = None):
    z, logdet = FlowBlock.__call__(self, x, y, reverse)
    return z, (z, logdet)


def _exact_block_inverse(block: FlowBlock, variables, z: Array, y, guidance, temperature,
                         reverse=None) -> Array:
  """x from z = f(x) in block order, token by token with a KV cache."""
  batch, length, _ = z.shape
  guided = not _no_guidance(guidance)

  def step(x_t, t, labels, cache, temp):
    return block.apply(variables, x_t, t, labels, cache, temp, reverse,
                       method=FlowBlock.decode_step)

  def body(t, carry):
    x, cache_c, cache_u = carry
    x_t = jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)
    (a, b), cache_c = step(x_t, t, y, cache_c, 1.0)
    if guided:
      (a_u, b_u), cache_u = step(x_t, t, None, cache_u, temperature)
      a, b = _guide(a, a_u, guidance), _guide(b, b_u, guidance)
    z_next = jax.lax.dynamic_slice_in_dim(z, t + 1, 1, axis=1)
    x = jax.lax.dynamic_update_slice_in_dim(x, z_next * jnp.exp(a) + b, t + 1, axis=1)
    return x, cache_c, cache_u

  cache = block.apply(variables, batch, method=FlowBlock.init_cache)
  x, _, _ = jax.lax.fori_loop(0, length - 1, body, (z, cache, cache if guided else []))
  return x


def _guided_shift_params(block: FlowBlock, variables, x_prefix: Array, y, guidance, temperature,
                         reverse=None) -> tuple[Array, Array]:
  """(a, b) of every token of x_prefix (block order), guided by CFG when guidance != 0."""
  a, b = block.apply(variables, x_prefix, y, 1.0, reverse, method=FlowBlock.shift_params)
  if not _no_guidance(guidance):
    a_u, b_u = block.apply(variables, x_prefix, None, temperature, reverse,
                           method=FlowBlock.shift_params)
    a, b = _guide(a, a_u, guidance), _guide(b, b_u, guidance)
  return a, b


def _fixed_point_block_inverse(block: FlowBlock, variables, z: Array, y, guidance, temperature,
                               tol, max_iters: int, num_groups: int, reverse=None):
  """Gauss-Seidel over groups (in order), Jacobi inside a group; num_groups=1 is Jacobi.

  A group only sees the prefix up to its own end (causality), so later tokens cost
  nothing. Returns (x, sweeps summed over groups, largest final residual).
  """
  length = z.shape[1]
  size = math.ceil(length / num_groups)

  def shift_params(x_prefix):
    return _guided_shift_params(block, variables, x_prefix, y, guidance, temperature, reverse)

  x = z
  total_iters = jnp.int32(0)
  residual = jnp.float32(0)
  for start in range(0, length, size):
    end = min(start + size, length)
    z_prefix = z[:, :end]
    in_group = (jnp.arange(end) >= start)[None, :, None]

    def body(carry, z_prefix=z_prefix, in_group=in_group):
      x_prefix, it, _ = carry
      a, b = shift_params(x_prefix)
      new = z_prefix * jnp.exp(a) + b
      # Tokens not yet exact can grow without bound; by causality the exact prefix does
      # not depend on them, but an overflow would reach it through 0 * inf in masked
      # attention. Bounding them keeps every sweep finite and leaves true solutions
      # (far inside the bound) unchanged.
      new = jnp.clip(jnp.where(jnp.isfinite(new), new, z_prefix), -_ITERATE_BOUND, _ITERATE_BOUND)
      new = jnp.where(in_group, new, x_prefix)
      return new, it + 1, jnp.max(jnp.abs(new - x_prefix))

    def cond(carry):
      _, it, res = carry
      return (it < max_iters) & ~(res <= tol)

    x_prefix, it, res = jax.lax.while_loop(
        cond, body, (x[:, :end], jnp.int32(0), jnp.float32(jnp.inf)))
    x = jnp.concatenate([x_prefix, x[:, end:]], axis=1)
    total_iters = total_iters + it
    residual = jnp.maximum(residual, res)
  return x, total_iters, residual


def _cached_fixed_point_block_inverse(block: FlowBlock, variables, z: Array, y, guidance,
                                      temperature, tol, max_iters: int, num_groups: int,
                                      reverse=None):
  """Gauss-Seidel-Jacobi with a KV cache of the solved groups; the same groups, iterates,
  stopping rule and sweep counts as `_fixed_point_block_inverse` (up to float
  re-association), at a fraction of its cost when num_groups > 1.

  The first group is solved as there: its prefix is the group itself, nothing to reuse.
  Each solved group's tokens are then fed once through the block's decode step, which
  writes their keys and values into a cache; a sweep over a later group [s, e) feeds only
  tokens s-1 .. e-2 (the solved token before the group and the group's own iterate, which
  give (a, b) for tokens s .. e-1) against that cache, instead of the whole prefix 0 .. e-1.
  Per block: O(T) token passes for the commits plus size-of-group tokens per sweep, instead
  of a prefix per sweep. Returns (x, sweeps summed over groups, largest final residual).
  """
  batch, length, _ = z.shape
  size = math.ceil(length / num_groups)
  guided = not _no_guidance(guidance)

  def prefix_params(x_prefix):
    return _guided_shift_params(block, variables, x_prefix, y, guidance, temperature, reverse)

  def chunk_params(chunk, first, caches):
    """chunk: tokens first .. first+s-1 (block order); the caches hold the tokens before
    `first`. -> (a, b) of tokens first+1 .. first+s and the caches with the chunk added."""
    cache_c, cache_u = caches
    (a, b), cache_c = block.apply(variables, chunk, first, y, cache_c, 1.0, reverse,
                                  method=FlowBlock.decode_step)
    if guided:
      (a_u, b_u), cache_u = block.apply(variables, chunk, first, None, cache_u, temperature,
                                        reverse, method=FlowBlock.decode_step)
      a, b = _guide(a, a_u, guidance), _guide(b, b_u, guidance)
    return a, b, (cache_c, cache_u)

  cache = block.apply(variables, batch, method=FlowBlock.init_cache)
  caches = (cache, cache if guided else None)
  cached = 0  # tokens 0 .. cached-1 are in the caches
  x = z
  total_iters = jnp.int32(0)
  residual = jnp.float32(0)
  for start in range(0, length, size):
    end = min(start + size, length)
    z_group = z[:, start:end]
    if start == 0:
      update = lambda x_group: prefix_params(x_group)
    else:
      solved = x[:, start - 1:start]

      def update(x_group, solved=solved, start=start, caches=caches):
        chunk = jnp.concatenate([solved, x_group[:, :-1]], axis=1)
        a, b, _ = chunk_params(chunk, start - 1, caches)
        return a, b

    def body(carry, update=update, z_group=z_group):
      x_group, it, _ = carry
      a, b = update(x_group)
      new = z_group * jnp.exp(a) + b
      # As in _fixed_point_block_inverse: keep unsolved iterates finite and bounded.
      new = jnp.clip(jnp.where(jnp.isfinite(new), new, z_group), -_ITERATE_BOUND, _ITERATE_BOUND)
      return new, it + 1, jnp.max(jnp.abs(new - x_group))

    def cond(carry):
      _, it, res = carry
      return (it < max_iters) & ~(res <= tol)

    x_group, it, res = jax.lax.while_loop(
        cond, body, (x[:, start:end], jnp.int32(0), jnp.float32(jnp.inf)))
    x = jnp.concatenate([x[:, :start], x_group, x[:, end:]], axis=1)
    total_iters = total_iters + it
    residual = jnp.maximum(residual, res)
    if end < length and end - 1 > cached:  # the next group reads tokens < end - 1 from the caches
      _, _, caches = chunk_params(x[:, cached:end - 1], cached, caches)
      cached = end - 1
  return x, total_iters, residual


class ForwardFlow(nn.Module):
  """F: NHWC image (or latent) -> (z tokens, full log|det J|, trajectory x^0..x^B).

  With prior_var, x^B (and z) is the last block's output divided by sqrt(var).
  """
  image_shape: tuple[int, int, int]  # (H, W, C)
  patch_size: int
  channels: int
  num_blocks: int
  layers_per_block: int
  num_heads: int
  mlp_ratio: int = 4
  num_classes: int = 0
  clip: float | None = None
  clip_form: str = 'hard'  # CLIP_FORMS: how `clip` bounds a and b
  prior_var: bool = False  # a fixed per-(token, dim) prior variance, TARFlow's `var`
  dtype: Any = jnp.float32
  attention: str = 'einsum'  # layers.ATTENTION_IMPLS
  # scan: the blocks are one nn.scan (each block's layers another), so compile time does
  # not grow with depth; params are stacked: blocks/layers/... with leading axes
  # (num_blocks, layers_per_block) instead of blocks_i/layers_j/... (models/layout.py
  # converts between the two). remat: layers.REMAT_POLICIES name, per layer.
  scan: bool = False
  remat: str = 'none'
  # The density of z (base_density.BASES): 'gaussian' N(0, I), or 'student_t' with `nu`
  # degrees of freedom per dimension; read by `base_nll`, `log_prob` and the samplers.
  base: str = 'gaussian'
  nu: float = 0.0

  @classmethod
  def from_config(cls, model_config) -> 'ForwardFlow':
    """From the `config.model` group (see config_lib.base_config)."""
    m = model_config
    return cls(image_shape=image_shape(m),
               patch_size=m.patch_size, channels=m.channels, num_blocks=m.num_blocks,
               layers_per_block=m.layers_per_block, num_heads=m.num_heads,
               mlp_ratio=m.mlp_ratio, num_classes=m.num_classes,
               clip=None if m.clip is None else float(m.clip),
               clip_form=m.get('clip_form', 'hard'),
               prior_var=bool(m.get('prior_var', False)),
               dtype=layers.resolve_dtype(m.dtype),
               attention=m.get('attention', 'einsum'), scan=bool(m.get('scan', False)),
               remat=m.get('remat', 'none'), base=m.get('base', 'gaussian'),
               # nu only means something for the Student-t base: a Gaussian F is the same
               # module whatever config.model.nu says (tools build it without the field).
               nu=float(m.get('nu', 0.0)) if m.get('base', 'gaussian') == 'student_t' else 0.0)

  @property
  def num_tokens(self) -> int:
    h, w, _ = self.image_shape
    return (h // self.patch_size) * (w // self.patch_size)

  @property
  def token_dim(self) -> int:
    return self.patch_size ** 2 * self.image_shape[2]

  @property
  def num_dims(self) -> int:
    return int(np.prod(self.image_shape))

  def _block_kwargs(self) -> dict:
    return dict(num_tokens=self.num_tokens, token_dim=self.token_dim, channels=self.channels,
                num_layers=self.layers_per_block, num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio, num_classes=self.num_classes, clip=self.clip,
                clip_form=self.clip_form, dtype=layers.resolve_dtype(self.dtype),
                attention=self.attention, scan=self.scan, remat=self.remat)

  def _orders(self) -> Array:
    """(num_blocks,) bool: block i runs its tokens reversed when i is odd."""
    return jnp.arange(self.num_blocks) % 2 == 1

  def setup(self):
    self._check_config()
    if self.scan:
      scanned = nn.scan(_ScannedBlock, variable_axes={'params': 0}, split_rngs={'params': True},
                        in_axes=(0, nn.broadcast), length=self.num_blocks)
      self.blocks = scanned(**self._block_kwargs())
    else:
      self.blocks = [FlowBlock(reverse_order=bool(i % 2), **self._block_kwargs())
                     for i in range(self.num_blocks)]
    if self.prior_var:
      self.prior_variance = self.param('var', nn.initializers.ones,
                                       (self.num_tokens, self.token_dim))

  def _prior_std(self) -> Array:
    """sqrt(var), (T, D): the prior's per-element std (fixed: no gradient reaches var)."""
    return jnp.sqrt(jax.lax.stop_gradient(self.prior_variance))

  def _check_config(self):
    h, w, c = self.image_shape
    p = self.patch_size
    if p <= 0 or h % p or w % p:
      raise ValueError(f'image size {h}x{w} is not divisible by the patch size {p}: '
                       'change model.patch_size or model.image_size')
    if self.channels % self.num_heads:
      raise ValueError(f'model.channels={self.channels} is not divisible by '
                       f'model.num_heads={self.num_heads}')
    if self.num_blocks < 1 or self.layers_per_block < 1:
      raise ValueError('model.num_blocks and model.layers_per_block must be >= 1')
    if self.clip is not None and self.clip <= 0:
      raise ValueError(f'model.clip={self.clip} must be positive (or None to turn it off)')
    check_clip_form(self.clip_form)
    layers.check_attention_impl(self.attention)
    layers.remat_policy(self.remat)
    base_density.check(self.base, self.nu)

  def _check_labels(self, y: Array | None, batch: int) -> None:
    """Concrete labels are checked here; traced ones are the data pipeline's job."""
    if y is None or isinstance(y, jax.core.Tracer):
      return
    y = np.asarray(y)
    if y.shape != (batch,):
      raise ValueError(f'labels have shape {y.shape}; expected ({batch},), one per example')
    bad = (y < -1) | (y >= self.num_classes)
    if bad.any():
      raise ValueError(
          f'label {int(y[bad][0])} is out of range: labels must be in [0, {self.num_classes}) '
          f'(model.num_classes={self.num_classes}) or -1 for "no label"')

  def _check_image(self, x: Array) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f'F expects NHWC inputs of shape (batch, {", ".join(map(str, self.image_shape))});'
                       f' got {tuple(x.shape)}. Check model.image_size / model.in_channels '
                       'against the data.')

  def _check_tokens(self, z: Array) -> None:
    if z.ndim != 3 or z.shape[1:] != (self.num_tokens, self.token_dim):
      raise ValueError(f'F^-1 expects tokens of shape (batch, {self.num_tokens}, {self.token_dim}); '
                       f'got {tuple(z.shape)}')

  def __call__(self, x: Array, y: Array | None = None) -> tuple[Array, Array, list[Array]]:
    self._check_image(x)
    self._check_labels(y, x.shape[0])
    tokens = layers.patchify(x.astype(jnp.float32), self.patch_size)
    trajectory = [tokens]
    logdet = jnp.zeros((x.shape[0],), jnp.float32)
    if self.scan:
      tokens, (states, logdets) = self.blocks(tokens, self._orders(), y)
      for i in range(self.num_blocks):  # the same summation order as the unrolled loop
        logdet = logdet + logdets[i]
        trajectory.append(states[i])
    else:
      for block in self.blocks:
        tokens, block_logdet = block(tokens, y)
        logdet = logdet + block_logdet
        trajectory.append(tokens)
    if self.prior_var:  # z = x^B / sqrt(var): the last state is what G starts from
      tokens = tokens / self._prior_std()
      logdet = logdet - 0.5 * jnp.sum(jnp.log(jax.lax.stop_gradient(self.prior_variance)))
      trajectory[-1] = tokens
    return tokens, logdet, trajectory

  def inverse(self, z: Array, y: Array | None = None, mode: str = 'exact', guidance=0.0,
              attn_temp=1.0, tol=1e-3, max_iters: int | None = None, num_groups: int = 1,
              kv_cache: bool = True):
    """z tokens -> x (NHWC).

    mode='exact' returns x. mode='fixed_point' returns (x, iterations, residual), each
    of the last two per block (block order): sweeps used (summed over groups) and the
    largest final max-abs update. max_iters defaults to T (exact by causality).
    guidance as a Python 0 skips the unconditional pass; attn_temp applies to that pass.
    kv_cache (fixed_point; default True): Gauss-Seidel-Jacobi keeps the keys and values
    of the solved groups instead of recomputing the prefix on every sweep
    (`_cached_fixed_point_block_inverse`: the same iterates up to float re-association,
    the same sweep counts; identical to kv_cache=False when num_groups=1). False is the
    recomputing implementation, kept for the benchmark's comparison.
    With `scan`, all blocks' inverses are one lax.scan (one traced block, any depth).
    """
    self._check_tokens(z)
    self._check_labels(y, z.shape[0])
    if mode not in ('exact', 'fixed_point'):
      raise ValueError(f"unknown inverse mode {mode!r}; use 'exact' or 'fixed_point'")
    if not _no_guidance(guidance) and not self.num_classes:
      raise ValueError('guidance needs a class-conditional model (model.num_classes > 0)')
    max_iters = self.num_tokens if max_iters is None else int(max_iters)
    if max_iters < 1 or num_groups < 1:
      raise ValueError('max_iters and num_groups must be >= 1')
    x = z.astype(jnp.float32)
    if self.prior_var:
      x = x * self._prior_std()  # TARFlow's `x = x * self.var.sqrt()`
    fixed_point = (_cached_fixed_point_block_inverse if kv_cache
                   else _fixed_point_block_inverse)
    if self.scan:
      x, iterations, residuals = self._scanned_inverse(
          x, y, mode, guidance, attn_temp, tol, max_iters, num_groups, fixed_point)
    else:
      iterations, residuals = [], []
      for block in reversed(self.blocks):
        unbound, variables = block.unbind()
        x_perm = block.permute(x)
        if mode == 'exact':
          x_perm = _exact_block_inverse(unbound, variables, x_perm, y, guidance, attn_temp)
        else:
          x_perm, it, res = fixed_point(
              unbound, variables, x_perm, y, guidance, attn_temp, tol, max_iters, num_groups)
          iterations.append(it)
          residuals.append(res)
        x = block.permute(x_perm)
      if mode != 'exact':
        iterations, residuals = jnp.stack(iterations[::-1]), jnp.stack(residuals[::-1])
    image = layers.unpatchify(x, self.image_shape, self.patch_size)
    if mode == 'exact':
      return image
    return image, iterations, residuals

  def _scanned_inverse(self, x, y, mode, guidance, attn_temp, tol, max_iters, num_groups,
                       fixed_point):
    """All blocks' inverses as one lax.scan over the stacked block params (last block
    first): one traced block body whatever num_blocks is. -> (x, iterations, residuals),
    the last two per block in block order (empty for 'exact')."""
    block = FlowBlock(**self._block_kwargs(), parent=None)  # unbound: applied to each slice
    stacked = self.variables['params']['blocks']

    def body(x, inputs):
      params, reverse = inputs
      variables = {'params': params}
      x_perm = flip(x, reverse)
      if mode == 'exact':
        x_perm = _exact_block_inverse(block, variables, x_perm, y, guidance, attn_temp, reverse)
        stats = (jnp.int32(0), jnp.float32(0))
      else:
        x_perm, it, res = fixed_point(
            block, variables, x_perm, y, guidance, attn_temp, tol, max_iters, num_groups, reverse)
        stats = (it, res)
      return flip(x_perm, reverse), stats

    x, (iterations, residuals) = jax.lax.scan(body, x, (stacked, self._orders()), reverse=True)
    return x, iterations, residuals


def image_shape(model_config) -> tuple[int, int, int]:
  """(H, W, C) of F's input from `config.model`: image_size square, or image_size x
  image_width when image_width > 0 (e.g. (days, 1, assets): one token per day)."""
  m = model_config
  return (int(m.image_size), int(m.get('image_width', 0) or m.image_size), int(m.in_channels))


def base_nll(flow: ForwardFlow, z: Array, logdet: Array) -> Array:
  """Per-sample NLL (nats) under the flow's own base density (`gaussian_nll` for the
  default Gaussian base)."""
  if flow.base == 'gaussian':
    return gaussian_nll(z, logdet)
  return base_density.nll(z, logdet, flow.base, flow.nu)


def gaussian_nll(z: Array, logdet: Array) -> Array:
  """Per-sample NLL in nats of the input F mapped to z (batch, ...), float32.

  Change of variables under F's N(0, I) prior over N = T * D dimensions:
  0.5 ||z||^2 + (N / 2) log(2 pi) - log|det dz/dx| (docs/method.md §2.2). The training
  loss uses it through `objectives.gaussian_nll`.
  """
  z = z.astype(jnp.float32).reshape(z.shape[0], -1)
  n = z.shape[1]
  return 0.5 * jnp.sum(z * z, axis=1) + 0.5 * n * math.log(2 * math.pi) - logdet.astype(jnp.float32)


def log_prob(flow: ForwardFlow, variables, x: Array, y: Array | None = None) -> Array:
  """Per-sample log density of x (nats), float32."""
  z, logdet, _ = flow.apply(variables, x, y)
  return -base_nll(flow, z, logdet)


def score_denoise(flow: ForwardFlow, variables, x_noisy: Array, y: Array | None,
                  sigma: float) -> Array:
  """Tweedie's step x = x~ + sigma^2 * grad log p(x~) (TARFlow's denoising pass)."""
  grad = jax.grad(lambda x: jnp.sum(log_prob(flow, variables, x, y)))(x_noisy.astype(jnp.float32))
  return x_noisy + (sigma ** 2) * grad


