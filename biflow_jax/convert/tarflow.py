"""PyTorch TARFlow (apple/ml-tarflow `transformer_flow.Model`) state dicts <-> F's params.

Import reads a `.pth` file (needs torch, which stays optional) or an `.npz` /
`.safetensors` of the same arrays under their PyTorch names (a `param/` prefix is allowed
in an .npz, other arrays are ignored). Export writes F back under those names, buffers
included, so `Model.load_state_dict(..., strict=True)` accepts it.

What the tensors say (`infer_shapes`): blocks, layers per block, width, token dim,
tokens, classes, MLP ratio, and the prior variance buffer `var`. What they do not say
(in_channels, so the patch size; head_dim; image size) comes from keyword arguments,
else from a JSON file beside the checkpoint (`<name>.json`, TARFlow's constructor
arguments: in_channels, img_size, patch_size, head_dim, ...; `tarflow_args` writes one),
else from TARFlow's own fixed values: its `Model` never passes head_dim to its blocks, so
heads are width / 64, and in_channels defaults to 3.

The prior: TARFlow samples x = F^-1(sqrt(var) * eps). A `var` that is not all ones is
loaded into F's `prior_var` layer (models/flow.py), so F's density and samples are
TARFlow's; an all-ones `var` needs no layer. TARFlow only changes `var` when nvp=False
(volume-preserving), which F does not represent, so published affine checkpoints have
var = 1.

TARFlow has no clip on (a, b); F's `model.clip` must be None for F to be TARFlow's
function. An export of a clipped F records `clip` and `clip_form` in its JSON file, which
this importer reads back (TARFlow's own code ignores them).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models import layout
from biflow_jax.models.flow import ForwardFlow

#: TARFlow's `Model` builds every attention layer with this head size (not an argument).
TARFLOW_HEAD_DIM = 64

_BLOCK = re.compile(r'^blocks\.(\d+)\.')
_LAYER = re.compile(r'^blocks\.\d+\.attn_blocks\.(\d+)\.')
_FIRST = 'blocks.0.proj_in.weight'


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What a TARFlow state dict's tensor shapes say about its architecture."""
  num_blocks: int
  layers_per_block: int
  channels: int        # Transformer width
  token_dim: int       # p * p * in_channels
  num_tokens: int      # (img_size / p) ** 2
  num_classes: int     # 0 = unconditional
  mlp_ratio: int       # TARFlow's `expansion`
  var: np.ndarray | None  # the prior variance buffer (num_tokens, token_dim), if stored

  @property
  def prior_var(self) -> bool:
    """Whether F needs its prior layer: `var` is stored and not exactly all ones."""
    return self.var is not None and not np.all(self.var == 1.0)


# ------------------------------------------------------------------------------- reading

def read_state(path: str | Path) -> dict[str, np.ndarray]:
  """PyTorch names -> float32 arrays. FileNotFoundError for a missing file, ImportError for
  a .pth without torch, ValueError (naming the file and the fix) for one that cannot be
  read: truncated, damaged, or not a state dict at all."""
  path = Path(path)
  try:
    state = read_state_dict(path)
  except (FileNotFoundError, ImportError):
    raise
  except Exception as e:  # pylint: disable=broad-except  (zip, pickle, torch, header errors)
    raise ValueError(f'{path} could not be read as a state dict ({type(e).__name__}: {e}); '
                     'the file is damaged, truncated or of another format: download or '
                     'export it again') from e
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def read_sidecar(path: str | Path) -> dict[str, Any]:
  """TARFlow's constructor arguments stated in `<name>.json` beside `path` ({} if none)."""
  sidecar = Path(path).with_suffix('.json')
  if not sidecar.is_file():
    return {}
  try:
    args = json.loads(sidecar.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{sidecar} (the architecture file beside {Path(path).name}) is not '
                     f'valid JSON ({e}); fix or delete it') from e
  if not isinstance(args, dict):
    raise ValueError(f'{sidecar} must hold a JSON object of TARFlow constructor arguments')
  return args


def _count(pattern: re.Pattern, names) -> int:
  found = [int(m.group(1)) for m in map(pattern.match, names) if m]
  return 1 + max(found) if found else 0


def _not_tarflow(state: Mapping[str, np.ndarray]) -> ValueError:
  names = sorted(state)
  shown = ', '.join(names[:4]) + (', ...' if len(names) > 4 else '')
  return ValueError(f'not a TARFlow state dict: {_FIRST} is missing (it holds {len(names)} '
                    f'tensors: {shown or "none"}); init_from and the importer need '
                    "apple/ml-tarflow's transformer_flow.Model weights")


def expected_shapes(s: Shapes) -> dict[str, tuple[int, ...]]:
  """Every tensor of TARFlow's state dict (buffers included) for these shapes, in order."""
  c, d, h = s.channels, s.token_dim, s.mlp_ratio * s.channels
  out: dict[str, tuple[int, ...]] = {}
  for i in range(s.num_blocks):
    b = f'blocks.{i}'
    out[f'{b}.pos_embed'] = (s.num_tokens, c)
    if s.num_classes:
      out[f'{b}.class_embed'] = (s.num_classes, 1, c)
    out[f'{b}.attn_mask'] = (s.num_tokens, s.num_tokens)
    out[f'{b}.proj_in.weight'], out[f'{b}.proj_in.bias'] = (c, d), (c,)
    for j in range(s.layers_per_block):
      l = f'{b}.attn_blocks.{j}'
      for norm in ('attention.norm', 'mlp.norm'):
        out[f'{l}.{norm}.weight'] = out[f'{l}.{norm}.bias'] = (c,)
      out[f'{l}.attention.qkv.weight'], out[f'{l}.attention.qkv.bias'] = (3 * c, c), (3 * c,)
      out[f'{l}.attention.proj.weight'], out[f'{l}.attention.proj.bias'] = (c, c), (c,)
      out[f'{l}.mlp.main.0.weight'], out[f'{l}.mlp.main.0.bias'] = (h, c), (h,)
      out[f'{l}.mlp.main.2.weight'], out[f'{l}.mlp.main.2.bias'] = (c, h), (c,)
    out[f'{b}.proj_out.weight'], out[f'{b}.proj_out.bias'] = (2 * d, c), (2 * d,)
  out['var'] = (s.num_tokens, d)
  return out


# Buffers an older or hand-made state dict may leave out: F does not need them.
_OPTIONAL = re.compile(r'^(var|blocks\.\d+\.attn_mask)$')


def infer_shapes(state: Mapping[str, np.ndarray]) -> Shapes:
  """The architecture a TARFlow state dict's shapes imply, after checking that every tensor
  of that architecture is there with its shape. ValueError names the first problem."""
  if _FIRST not in state:
    raise _not_tarflow(state)
  channels, token_dim = state[_FIRST].shape
  out_shape = state.get('blocks.0.proj_out.weight', np.zeros((0,))).shape
  if out_shape[:1] == (token_dim,):
    raise ValueError('this TARFlow checkpoint is volume-preserving (nvp=False: proj_out gives '
                     'b only); F represents affine (nvp=True) TARFlow only')
  try:
    hidden = state['blocks.0.attn_blocks.0.mlp.main.0.weight'].shape[0]
    classes = state['blocks.0.class_embed'].shape[0] if 'blocks.0.class_embed' in state else 0
    shapes = Shapes(
        num_blocks=_count(_BLOCK, state), layers_per_block=_count(_LAYER, state),
        channels=int(channels), token_dim=int(token_dim),
        num_tokens=int(state['blocks.0.pos_embed'].shape[0]),
        num_classes=int(classes),
        mlp_ratio=int(hidden // channels), var=state.get('var'))
  except KeyError as e:
    raise ValueError(f'the TARFlow state dict lacks {e.args[0]}: the file is incomplete') from e
  if shapes.mlp_ratio * channels != hidden:
    raise ValueError(f'MLP width {hidden} is not a whole multiple of the width {channels}')
  for name, shape in expected_shapes(shapes).items():
    if name not in state:
      if _OPTIONAL.match(name):
        continue
      raise ValueError(f'the TARFlow state dict lacks {name} (expected shape {shape}) although '
                       f'its other tensors describe {shapes.num_blocks} blocks x '
                       f'{shapes.layers_per_block} layers: the file is incomplete')
    if tuple(state[name].shape) != shape:
      raise ValueError(f'TARFlow tensor {name} has shape {tuple(state[name].shape)}, but the '
                       f'rest of the state dict implies {shape}: blocks of different sizes '
                       'are not a TARFlow F')
  if shapes.var is not None and not np.all(shapes.var > 0):
    raise ValueError(f'the prior variance `var` has {int(np.sum(shapes.var <= 0))} entries '
                     '<= 0: not a variance; the file is damaged')
  return shapes


# ------------------------------------------------------------------------------- import

def _architecture_args(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments, else `<name>.json` (or a `tarflow_reference.json` beside it), else
  TARFlow's defaults."""
  args: dict[str, Any] = {'in_channels': 3, 'head_dim': TARFLOW_HEAD_DIM}
  stated = read_sidecar(path) or read_sidecar(path.parent / 'tarflow_reference.json')
  args.update(stated)
  args.update({k: v for k, v in overrides.items() if v is not None})
  return args


def build_flow(state: Mapping[str, np.ndarray], *, in_channels: int, head_dim: int,
               patch_size: int | None = None, img_size: int | None = None,
               clip: float | None = None, clip_form: str = 'hard') -> ForwardFlow:
  """The ForwardFlow that matches the state dict's shapes (prior layer when var != 1)."""
  s = infer_shapes(state)
  if s.token_dim % in_channels:
    raise ValueError(f'token dim {s.token_dim} is not p*p*in_channels for '
                     f'in_channels={in_channels}; pass in_channels=')
  p = patch_size or int(round(np.sqrt(s.token_dim // in_channels)))
  side = img_size or int(round(np.sqrt(s.num_tokens))) * p
  if p * p * in_channels != s.token_dim or (side // p) ** 2 != s.num_tokens:
    raise ValueError(f'cannot place {s.num_tokens} tokens of dim {s.token_dim} on a square image '
                     f'with in_channels={in_channels}, patch_size={p}, img_size={side}')
  if s.channels % head_dim:
    raise ValueError(f'channels {s.channels} not divisible by head_dim {head_dim}; pass head_dim=')
  return ForwardFlow(image_shape=(side, side, in_channels), patch_size=p, channels=s.channels,
                     num_blocks=s.num_blocks, layers_per_block=s.layers_per_block,
                     num_heads=s.channels // head_dim, mlp_ratio=s.mlp_ratio,
                     num_classes=s.num_classes, clip=clip, clip_form=clip_form,
                     prior_var=s.prior_var)


def _dense(state, name):
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def _norm(state, name):
  return {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}


def convert_params(state: Mapping[str, np.ndarray], flow: ForwardFlow) -> dict:
  """PyTorch TARFlow names -> the ForwardFlow params tree (numpy, float32), in `flow`'s
  layout (stacked when flow.scan, models/layout.py).

  With `flow.prior_var`, TARFlow's `var` becomes F's `var` (all ones when absent).
  """
  params = {}
  for i in range(flow.num_blocks):
    b = f'blocks.{i}'
    block = {'pos_embed': state[f'{b}.pos_embed'], 'proj_in': _dense(state, f'{b}.proj_in'),
             'proj_out': _dense(state, f'{b}.proj_out')}
    if flow.num_classes:
      block['class_embed'] = state[f'{b}.class_embed'].reshape(flow.num_classes, -1)
    for j in range(flow.layers_per_block):
      l = f'{b}.attn_blocks.{j}'
      block[f'layers_{j}'] = {
          'attn': {'norm': _norm(state, f'{l}.attention.norm'),
                   'qkv': _dense(state, f'{l}.attention.qkv'),
                   'proj': _dense(state, f'{l}.attention.proj')},
          'mlp': {'norm': _norm(state, f'{l}.mlp.norm'),
                  'fc1': _dense(state, f'{l}.mlp.main.0'),
                  'fc2': _dense(state, f'{l}.mlp.main.2')},
      }
    params[f'blocks_{i}'] = block
  if flow.prior_var:
    params['var'] = np.asarray(state.get('var', np.ones((flow.num_tokens, flow.token_dim),
                                                        np.float32)), np.float32)
  return layout.to_flow_layout(params, flow.scan)


def load(path: str | Path, *, in_channels: int | None = None, head_dim: int | None = None,
         patch_size: int | None = None, img_size: int | None = None,
         scan: bool = False) -> tuple[ForwardFlow, dict]:
  """(flow, params) from a TARFlow checkpoint; use as flow.apply({'params': params}, x, y).
  scan=True gives the scanned F and its stacked params (models/layout.py)."""
  path = Path(path)
  state = read_state(path)
  args = _architecture_args(path, dict(in_channels=in_channels, head_dim=head_dim,
                                       patch_size=patch_size, img_size=img_size))
  flow = build_flow(state, in_channels=int(args['in_channels']), head_dim=int(args['head_dim']),
                    patch_size=args.get('patch_size'), img_size=args.get('img_size'),
                    clip=args.get('clip'), clip_form=args.get('clip_form', 'hard'))
  flow = flow.clone(scan=scan)
  return flow, convert_params(state, flow)


# ------------------------------------------------------------------------------- export

def _linear(params, name, out, key):
  out[f'{key}.weight'] = np.asarray(params[name]['kernel']).T
  out[f'{key}.bias'] = np.asarray(params[name]['bias'])


def export_state_dict(flow: ForwardFlow, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """F's params -> TARFlow's state dict (numpy float32, PyTorch names and layouts), with its
  buffers: each block's causal `attn_mask` and the prior `var` (ones without a prior layer).
  `convert_params` of the result gives back exactly `params`. Either layout is accepted."""
  params = layout.to_flow_layout(params, scan=False)
  out: dict[str, np.ndarray] = {}
  for i in range(flow.num_blocks):
    p, b = params[f'blocks_{i}'], f'blocks.{i}'
    out[f'{b}.pos_embed'] = np.asarray(p['pos_embed'])
    if flow.num_classes:
      out[f'{b}.class_embed'] = np.asarray(p['class_embed']).reshape(flow.num_classes, 1, -1)
    out[f'{b}.attn_mask'] = np.tril(np.ones((flow.num_tokens, flow.num_tokens), np.float32))
    _linear(p, 'proj_in', out, f'{b}.proj_in')
    for j in range(flow.layers_per_block):
      layer, l = p[f'layers_{j}'], f'{b}.attn_blocks.{j}'
      for ours, theirs, group in (('attn', 'attention', ('qkv', 'proj')), ('mlp', 'mlp', ())):
        out[f'{l}.{theirs}.norm.weight'] = np.asarray(layer[ours]['norm']['scale'])
        out[f'{l}.{theirs}.norm.bias'] = np.asarray(layer[ours]['norm']['bias'])
        for name in group:
          _linear(layer[ours], name, out, f'{l}.{theirs}.{name}')
      _linear(layer['mlp'], 'fc1', out, f'{l}.mlp.main.0')
      _linear(layer['mlp'], 'fc2', out, f'{l}.mlp.main.2')
    _linear(p, 'proj_out', out, f'{b}.proj_out')
  out['var'] = (np.asarray(params['var']) if flow.prior_var
                else np.ones((flow.num_tokens, flow.token_dim), np.float32))
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def tarflow_args(flow: ForwardFlow) -> dict[str, Any]:
  """TARFlow's constructor arguments for this F (the JSON file beside an export), plus
  head_dim and expansion (fixed inside TARFlow's Model) and our clip."""
  h, w, c = flow.image_shape
  if h != w:
    raise ValueError(f'TARFlow models square images; F is {h}x{w}')
  return {'in_channels': c, 'img_size': h, 'patch_size': flow.patch_size,
          'channels': flow.channels, 'num_blocks': flow.num_blocks,
          'layers_per_block': flow.layers_per_block, 'nvp': True,
          'num_classes': flow.num_classes, 'head_dim': flow.channels // flow.num_heads,
          'expansion': flow.mlp_ratio, 'clip': flow.clip, 'clip_form': flow.clip_form}


def export_caveats(flow: ForwardFlow) -> list[str]:
  """Where ml-tarflow's own `Model` would not compute this F (empty when it does)."""
  notes = []
  if flow.clip is not None:
    how = 'clips' if flow.clip_form == 'hard' else f'bounds ({flow.clip_form}, model.clip_form)'
    notes.append(f'F {how} a and b to +-{flow.clip:g} (model.clip) and TARFlow does not: its '
                 'code computes another function wherever the bound acts')
  if flow.channels // flow.num_heads != TARFLOW_HEAD_DIM:
    notes.append(f'F uses {flow.num_heads} heads of {flow.channels // flow.num_heads} dims and '
                 f'TARFlow\'s Model fixes head_dim={TARFLOW_HEAD_DIM}: build its MetaBlocks '
                 'with the head_dim of the JSON file')
  return notes

