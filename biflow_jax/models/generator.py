"""The reverse model G (BiFlow's generator): noise tokens z -> clean tokens x in one pass.

A ViT with *bidirectional* attention over z's T tokens (docs/method.md §3). Unlike
F's causal blocks, every output token sees every input token, which is what lets G
undo all of F's blocks at once instead of token by token.

Conditioning. c = class embedding + MLP(Fourier features of the guidance scale w).
The class table has num_classes + 1 rows; the last row is the null class (label -1, or
y=None), so an unconditional model (num_classes=0) has only the null row. c drives
adaLN-zero in every layer: per sub-layer a shift, scale and gate computed from c by a
zero-initialised Dense, so a fresh model is a stack of identity layers and its output
does not depend on c at all (the conditioning is learned from zero, as in DiT).

Stages. G has `num_stages` = B stages that mirror F's B blocks in reverse, plus one
extra "denoise" stage (x~ -> clean x). The `depth` layers are split over the B + 1
stages by `stage_depths`: each stage gets depth // (B + 1) layers and the first
depth % (B + 1) stages get one more (a fixed rule, so a config names its split; e.g.
B/2 at ImageNet-256: depth 12, B = 8 -> 2,2,2,1,1,1,1,1,1). After stage j a projection head phi_j maps the hidden
state to token space:

    projections[j] = phi_j(h^j) ~ x^{B-1-j}   (stage j undoes F's block B-1-j)
    projections[0] ~ x^{B-1}, ..., projections[B-1] ~ x^0 = x~ (the noisy input)
    x_out = phi_out(h^B) ~ x (clean)

where x^0..x^B is F's trajectory (flow.ForwardFlow returns [x^0, ..., x^B]).

Heads. phi = RMSNorm, adaLN shift/scale from c, Dense to D (DiT's final layer).
- head_mode='per_stage' (BiFlow's hidden alignment): each stage j < B has its own
  Dense `stage_proj_j`; the B stage heads share one adaLN modulation `stage_mod`
  (a per-head modulation would cost 2 * width**2 each: 140M instead of 132M params at
  B/2 for heads that are thrown away at sampling). The output head has its own
  modulation `out_mod` and Dense `out_proj`.
- head_mode='shared' (the "hidden distillation" ablation): every stage uses the output
  head, which forces every h^j to be an input-space state.
Head Dense layers are NOT zero-initialised: fan-in (LeCun) init on unit-RMS normed
features gives unit-scale outputs, the scale of the normalised targets, and a non-zero
gradient into the trunk from step one; a zero kernel would block the alignment
loss's gradient to the hidden states until the heads had grown. The head *modulation*
is zero-initialised (adaLN-zero), so at init the heads are plain norm + Dense.

Numerics: params are float32; matmuls run in `dtype`; norms, softmax, the residual
stream and all outputs are float32.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax.models import layers
from biflow_jax.models.layers import resolve_dtype

Array = jax.Array
Dtype = Any

# (width, depth, num_heads). DiT/SiT sizes; 'tiny' is for CPU tests. A size's depth is
# raised to B + 1 by `from_config` when smaller, so every stage has a layer.
SIZES: dict[str, tuple[int, int, int]] = {
    'tiny': (64, 3, 2),
    'S': (384, 12, 6),
    'B': (768, 12, 12),
    'L': (1024, 24, 16),
    'XL': (1152, 28, 16),
}
HEAD_MODES = ('per_stage', 'shared')
SKIPS = ('none', 'add', 'affine')
_SKIP_CLIP = 3.0  # the affine skip's log-scale bound (F's clip of a and b)
MLP_KINDS = ('swiglu', 'gelu')

_NORM_EPS = 1e-6
_W_FEATURES = 256       # Fourier features of w (DiT's timestep-embedding size)
W_EMBED_SCALE = 1000.0  # the default: w is embedded like a DiT timestep t = 1000 w
_W_MAX_PERIOD = 10000.0
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


def stage_depths(depth: int, num_stages: int) -> tuple[int, ...]:
  """Layers per stage for `num_stages` flow stages + 1 denoise stage.

  Even split; the first depth % (num_stages + 1) stages get one extra layer.
  E.g. depth 12, B = 8 -> (2, 2, 2, 1, 1, 1, 1, 1, 1).
  """
  n = num_stages + 1
  if num_stages < 1 or depth < n:
    raise ValueError(f'depth={depth} cannot give each of the {n} stages (num_stages={num_stages} '
                     'flow stages + 1 denoise stage) a layer: raise reverse.depth')
  base, extra = divmod(depth, n)
  return tuple(base + (i < extra) for i in range(n))


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  """SwiGLU hidden size: 2/3 of the GELU one (same params), rounded to a multiple of 8."""
  return max(8, 8 * round(2 * mlp_ratio * width / 3 / 8))


def fourier_features(w: Array, num_features: int = _W_FEATURES,
                     scale: float = W_EMBED_SCALE) -> Array:
  """(B,) -> (B, num_features) [cos, sin] features of w (DiT's timestep embedding of scale * w).

  Angular frequencies run geometrically from `scale` down to scale / 10,000 radians per
  unit of w. At the default 1000 (DiT's t = 1000 w) the fastest feature's period is
  0.0063 in w, so G's response to w can vary within a sweep's w step; a smaller scale
  (reverse.w_embed_scale) makes every feature smooth over w's trained range.
  """
  half = num_features // 2
  freqs = jnp.exp(-math.log(_W_MAX_PERIOD) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = (scale * w.astype(jnp.float32))[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
  return x * (1.0 + scale) + shift


def _rms_norm(name: str | None = None) -> nn.RMSNorm:
  """Scale-free RMSNorm (adaLN supplies the scale), computed in float32."""
  return nn.RMSNorm(epsilon=_NORM_EPS, use_scale=False, dtype=jnp.float32, name=name)


def _zero_dense(features: int, dtype: Dtype, name: str | None = None) -> nn.Dense:
  """adaLN-zero modulation: zero kernel and bias, so c has no effect at init."""
  return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.zeros,
                  bias_init=nn.initializers.zeros, name=name)


class SelfAttention(nn.Module):
  """Bidirectional multi-head attention (no mask), with RMS qk-norm for stability.

  `attention` is one of layers.ATTENTION_IMPLS; 'einsum' is the original hand-written path.
  """
  width: int
  num_heads: int
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    head_dim = self.width // self.num_heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name='qkv')(x.astype(self.dtype))
    qkv = qkv.reshape(*x.shape[:2], 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.qk_norm:
      q = nn.RMSNorm(epsilon=_NORM_EPS, dtype=jnp.float32, name='q_norm')(q.astype(jnp.float32))
      k = nn.RMSNorm(epsilon=_NORM_EPS, dtype=jnp.float32, name='k_norm')(k.astype(jnp.float32))
    if self.attention == 'einsum':
      logits = jnp.einsum('bqhd,bkhd->bhqk', q.astype(self.dtype), k.astype(self.dtype))
      logits = logits.astype(jnp.float32) / math.sqrt(head_dim)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, v.astype(self.dtype))
    else:
      out = layers.attend(q, k, v, impl=self.attention, dtype=self.dtype)
    return nn.Dense(self.width, dtype=self.dtype, name='proj')(out.reshape(*x.shape[:2], self.width))


class FeedForward(nn.Module):
  """SwiGLU (silu(x W1) * x W3) W2, or a tanh-GELU MLP."""
  width: int
  mlp: str = 'swiglu'
  mlp_ratio: float = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    if self.mlp == 'swiglu':
      hidden = swiglu_hidden(self.width, self.mlp_ratio)
      gate = nn.Dense(hidden, dtype=self.dtype, name='fc_gate')(x)
      h = nn.silu(gate) * nn.Dense(hidden, dtype=self.dtype, name='fc_in')(x)
    else:
      h = nn.gelu(nn.Dense(int(self.mlp_ratio * self.width), dtype=self.dtype, name='fc_in')(x))
    return nn.Dense(self.width, dtype=self.dtype, name='fc_out')(h)


class AdaLNBlock(nn.Module):
  """Pre-RMSNorm Transformer layer with adaLN-zero: identity at init.

  x += gate1 * Attn(norm(x) * (1 + scale1) + shift1); same for the MLP.
  """
  width: int
  num_heads: int
  mlp: str = 'swiglu'
  mlp_ratio: float = 4
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'
  scan_output: bool = False  # return (x, x): nn.scan's (carry, output) for a scanned stack

  @nn.compact
  def __call__(self, x: Array, c_act: Array) -> Array | tuple[Array, Array]:
    """x: (B, T, width) float32 residual stream; c_act: silu(c), (B, width)."""
    mod = _zero_dense(6 * self.width, self.dtype, 'modulation')(c_act.astype(self.dtype))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(
        mod.astype(jnp.float32)[:, None, :], 6, axis=-1)
    h = _modulate(_rms_norm('norm1')(x), shift1, scale1)
    h = SelfAttention(self.width, self.num_heads, self.qk_norm, self.dtype, self.attention,
                      name='attn')(h)
    x = x + gate1 * h.astype(jnp.float32)
    h = _modulate(_rms_norm('norm2')(x), shift2, scale2)
    h = FeedForward(self.width, self.mlp, self.mlp_ratio, self.dtype, name='mlp')(h)
    x = x + gate2 * h.astype(jnp.float32)
    return (x, x) if self.scan_output else x


class ReverseModel(nn.Module):
  """G: (z tokens, label y, guidance w) -> (clean tokens x_out, projections).

  `__call__(z, y, w)`:
    z: (B, T, D) noise tokens (F's z, original token order).
    y: int (B,) labels, -1 = null; None = all null.
    w: float (B,) guidance scales; None = zeros.
  Returns x_out (B, T, D) float32, the clean sample, and `projections`, a list of B
  float32 (B, T, D) arrays with projections[j] = phi_j(h^j) aligned with F's trajectory
  state x^{B-1-j}: projections[0] ~ x^{B-1}, ..., projections[B-1] ~ x^0 = x~.
  (See the module docstring for stages, heads and init.)
  """
  num_tokens: int
  token_dim: int
  width: int
  depth: int
  num_heads: int
  num_stages: int
  mlp_ratio: float = 4
  mlp: str = 'swiglu'
  num_classes: int = 0
  head_mode: str = 'per_stage'
  qk_norm: bool = True
  dtype: Any = jnp.float32
  attention: str = 'einsum'  # layers.ATTENTION_IMPLS
  # scan: the depth layers are one nn.scan (params `blocks/...` stacked on a leading depth
  # axis instead of blocks_k/...; models/layout.py converts); every layer's output is a
  # scan output, of which the stage boundaries are kept. remat: layers.REMAT_POLICIES.
  scan: bool = False
  remat: str = 'none'
  # skip (SKIPS): how the output and every projection use the input tokens z. 'none': the
  # head's output itself (images). 'add': z + head. 'affine': the head gives (s, b) per
  # element and the output is z * exp(clip(s, -3, 3)) + b, the form of an affine flow's
  # inverse, whose scale s can depend on every token. G's heads end in an RMS norm, so with
  # 'none' a token's output does not grow with |z|: fine for images in [-1, 1], but
  # heavy-tailed data whose scale moves from day to day (market returns) needs z's tails
  # and a multiplicative path.
  skip: str = 'none'
  # w_embed_scale: the Fourier features of w use angular frequencies from w_embed_scale down
  # to w_embed_scale / 10,000 per unit of w (fourier_features).
  w_embed_scale: float = W_EMBED_SCALE
  # unguided_embed: a learned (width,) vector added to c where w == 0 exactly, so G's unguided
  # mode has its own code however smooth the Fourier features of w are (as the class
  # embedding's null row gives "no label" its own). Adds the param `unguided_embed`.
  unguided_embed: bool = False

  @classmethod
  def from_config(cls, reverse_config, model_config) -> 'ReverseModel':
    """From `config.reverse` (G's own choices) and `config.model` (F: shapes, B, classes).

    Reads reverse fields with .get(name, default): size, width/depth/num_heads (0 = from
    `size`; a size's depth is raised to B + 1 if smaller), mlp, mlp_ratio, head_mode,
    qk_norm, dtype ('' = model.dtype), attention ('' = model.attention), scan, remat.
    """
    r, m = reverse_config, model_config
    size = r.get('size', 'tiny')
    if size not in SIZES:
      raise ValueError(f'unknown reverse.size {size!r}; use one of {list(SIZES)}')
    width, depth, heads = SIZES[size]
    num_stages = int(m.num_blocks)
    width_px = int(m.get('image_width', 0) or m.image_size)  # 0: square images
    return cls(num_tokens=(m.image_size // m.patch_size) * (width_px // m.patch_size),
               token_dim=m.patch_size ** 2 * m.in_channels,
               width=int(r.get('width', 0) or width),
               depth=int(r.get('depth', 0) or max(depth, num_stages + 1)),
               num_heads=int(r.get('num_heads', 0) or heads),
               num_stages=num_stages,
               mlp_ratio=r.get('mlp_ratio', 4),
               mlp=r.get('mlp', 'swiglu'),
               num_classes=int(m.num_classes),
               head_mode=r.get('head_mode', 'per_stage'),
               qk_norm=bool(r.get('qk_norm', True)),
               dtype=resolve_dtype(r.get('dtype', '') or m.dtype),
               attention=r.get('attention', '') or m.get('attention', 'einsum'),
               scan=bool(r.get('scan', False)), remat=r.get('remat', 'none'),
               skip=r.get('skip', 'none'),
               w_embed_scale=float(r.get('w_embed_scale', W_EMBED_SCALE)),
               unguided_embed=bool(r.get('unguided_embed', False)))

  @property
  def stage_depths(self) -> tuple[int, ...]:
    return stage_depths(self.depth, self.num_stages)

  def setup(self):
    self._check_config()
    dtype = resolve_dtype(self.dtype)
    self.embed_in = nn.Dense(self.width, dtype=dtype)
    self.pos_embed = self.param('pos_embed', _EMBED_INIT, (self.num_tokens, self.width))
    self.class_embed = nn.Embed(self.num_classes + 1, self.width, embedding_init=_EMBED_INIT)
    self.w_fc1 = nn.Dense(self.width, dtype=dtype)
    self.w_fc2 = nn.Dense(self.width, dtype=dtype)
    if self.unguided_embed:
      self.unguided_code = self.param('unguided_embed', _EMBED_INIT, (self.width,))
    stack = layers.stack_of(AdaLNBlock, self.depth, self.scan, self.remat, in_axes=nn.broadcast)
    kw = dict(width=self.width, num_heads=self.num_heads, mlp=self.mlp, mlp_ratio=self.mlp_ratio,
              qk_norm=self.qk_norm, dtype=dtype, attention=self.attention)
    if self.scan:
      self.blocks = stack(**kw, scan_output=True)
    else:
      self.blocks = [stack(**kw) for _ in range(self.depth)]
    self.head_norm = _rms_norm()  # no parameters
    self.out_mod = _zero_dense(2 * self.width, dtype)
    head_dim = 2 * self.token_dim if self.skip == 'affine' else self.token_dim  # (s, b)
    self.out_proj = nn.Dense(head_dim, dtype=dtype)
    if self.head_mode == 'per_stage':
      self.stage_mod = _zero_dense(2 * self.width, dtype)
      self.stage_proj = [nn.Dense(head_dim, dtype=dtype) for _ in range(self.num_stages)]

  def _check_config(self):
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
    if self.head_mode not in HEAD_MODES:
      raise ValueError(f'unknown head_mode {self.head_mode!r}; use one of {HEAD_MODES}')
    if self.mlp not in MLP_KINDS:
      raise ValueError(f'unknown mlp {self.mlp!r}; use one of {MLP_KINDS}')
    if self.skip not in SKIPS:
      raise ValueError(f'unknown skip {self.skip!r}; use one of {SKIPS}')
    if not (math.isfinite(self.w_embed_scale) and self.w_embed_scale > 0):
      raise ValueError(f'w_embed_scale={self.w_embed_scale} must be a finite number > 0 '
                       '(config.reverse.w_embed_scale; the default is 1000)')
    stage_depths(self.depth, self.num_stages)  # raises if a stage would be empty
    layers.check_attention_impl(self.attention)
    layers.remat_policy(self.remat)

  def _check_inputs(self, z: Array, y: Array | None) -> None:
    if z.ndim != 3 or z.shape[1:] != (self.num_tokens, self.token_dim):
      raise ValueError(f'G expects tokens of shape (batch, {self.num_tokens}, {self.token_dim}); '
                       f'got {tuple(z.shape)}')
    if y is None or isinstance(y, jax.core.Tracer):
      return
    y = np.asarray(y)
    if y.shape != (z.shape[0],):
      raise ValueError(f'labels have shape {y.shape}; expected ({z.shape[0]},)')
    bad = (y < -1) | (y >= self.num_classes)
    if bad.any():
      raise ValueError(f'label {int(y[bad][0])} is out of range: labels must be in '
                       f'[0, {self.num_classes}) or -1 for "no label"')

  def condition(self, y: Array | None, w: Array | None, batch: int) -> Array:
    """c = class embedding (null row for -1 / None) + MLP(Fourier(w)); (B, width) float32.

    With unguided_embed, rows whose w is exactly 0 also get the learned `unguided_embed`.
    """
    null = self.num_classes
    if y is None:
      idx = jnp.full((batch,), null, jnp.int32)
    else:
      idx = jnp.where(y < 0, null, y).astype(jnp.int32)
    c = self.class_embed(idx).astype(jnp.float32)
    w = jnp.zeros((batch,), jnp.float32) if w is None else jnp.broadcast_to(
        jnp.asarray(w, jnp.float32), (batch,))
    e = self.w_fc2(nn.silu(self.w_fc1(fourier_features(w, scale=self.w_embed_scale))))
    c = c + e.astype(jnp.float32)
    if self.unguided_embed:
      c = c + jnp.where((w == 0)[:, None], self.unguided_code.astype(jnp.float32)[None], 0.0)
    return c

  def _head(self, mod: nn.Dense, proj: nn.Dense, h: Array, c_act: Array) -> Array:
    shift, scale = jnp.split(mod(c_act).astype(jnp.float32)[:, None, :], 2, axis=-1)
    h = _modulate(self.head_norm(h), shift, scale)
    return proj(h.astype(resolve_dtype(self.dtype))).astype(jnp.float32)

  def __call__(self, z: Array, y: Array | None = None,
               w: Array | None = None) -> tuple[Array, list[Array]]:
    out, projections = self._outputs(z, y, w)
    if self.skip == 'none':
      return out, projections
    z32 = z.astype(jnp.float32)

    def through(p: Array) -> Array:
      if self.skip == 'add':
        return z32 + p
      scale, shift = jnp.split(p, 2, axis=-1)
      return z32 * jnp.exp(jnp.clip(scale, -_SKIP_CLIP, _SKIP_CLIP)) + shift

    return through(out), [through(p) for p in projections]

  def _outputs(self, z: Array, y: Array | None, w: Array | None) -> tuple[Array, list[Array]]:
    self._check_inputs(z, y)
    dtype = resolve_dtype(self.dtype)
    c_act = nn.silu(self.condition(y, w, z.shape[0])).astype(dtype)
    h = self.embed_in(z.astype(dtype)).astype(jnp.float32) + self.pos_embed
    starts = np.cumsum((0,) + self.stage_depths)
    projections = []
    if self.scan:
      h, states = self.blocks(h, c_act)  # states[k]: the output of layer k
      for j in range(self.num_stages):
        projections.append(self._project(j, states[starts[j + 1] - 1], c_act))
      return self._head(self.out_mod, self.out_proj, h, c_act), projections
    for j in range(self.num_stages + 1):  # B flow stages, then the denoise stage
      for block in self.blocks[starts[j]:starts[j + 1]]:
        h = block(h, c_act)
      if j < self.num_stages:
        projections.append(self._project(j, h, c_act))
    return self._head(self.out_mod, self.out_proj, h, c_act), projections

  def _project(self, j: int, h: Array, c_act: Array) -> Array:
    """phi_j: the output head itself ('shared') or stage j's own Dense ('per_stage')."""
    if self.head_mode == 'shared':
      return self._head(self.out_mod, self.out_proj, h, c_act)
    return self._head(self.stage_mod, self.stage_proj[j], h, c_act)


def count_params(module: ReverseModel, batch: int = 1) -> int:
  """Parameter count via jax.eval_shape (no memory is allocated, so any size is cheap)."""
  z = jax.ShapeDtypeStruct((batch, module.num_tokens, module.token_dim), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  w = jax.ShapeDtypeStruct((batch,), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), z, y, w)
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes['params'])))
