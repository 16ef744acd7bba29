"""Import a PyTorch TARFlow (apple/ml-tarflow `transformer_flow.Model`) state dict.

Reads a `.pth` file (needs torch, which stays optional) or an `.npz` of the same arrays
under their PyTorch names (a `param/` prefix is allowed, other arrays are ignored).
Shapes give widths, depths and classes; the head size and the image geometry do not,
so they come from keyword arguments, else from a JSON file beside the checkpoint with
TARFlow's constructor arguments (`<name>.json` or `tarflow_reference.json`-style:
in_channels, img_size, patch_size, head_dim), else from TARFlow's defaults
(in_channels 3, head_dim 64).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models.flow import ForwardFlow

_BLOCK = re.compile(r'^blocks\.(\d+)\.')
_LAYER = re.compile(r'^blocks\.\d+\.attn_blocks\.(\d+)\.')


def _architecture_args(path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
  args: dict[str, Any] = {'in_channels': 3, 'head_dim': 64}
  for sidecar in (path.with_suffix('.json'), path.parent / 'tarflow_reference.json'):
    if sidecar.exists():
      args.update(json.loads(sidecar.read_text()))
      break
  args.update({k: v for k, v in overrides.items() if v is not None})
  return args


def build_flow(state: Mapping[str, np.ndarray], *, in_channels: int, head_dim: int,
               patch_size: int | None = None, img_size: int | None = None) -> ForwardFlow:
  """Infer the ForwardFlow that matches the state dict's shapes."""
  if 'blocks.0.proj_in.weight' not in state:
    raise ValueError('not a TARFlow state dict: blocks.0.proj_in.weight is missing')
  num_blocks = 1 + max(int(_BLOCK.match(k).group(1)) for k in state if _BLOCK.match(k))
  layers = 1 + max(int(_LAYER.match(k).group(1)) for k in state if _LAYER.match(k))
  channels, token_dim = state['blocks.0.proj_in.weight'].shape
  num_tokens = state['blocks.0.pos_embed'].shape[0]
  num_classes = state['blocks.0.class_embed'].shape[0] if 'blocks.0.class_embed' in state else 0
  hidden = state['blocks.0.attn_blocks.0.mlp.main.0.weight'].shape[0]
  if token_dim % in_channels:
    raise ValueError(f'token dim {token_dim} is not p*p*in_channels for in_channels={in_channels}; '
                     'pass in_channels=')
  p = patch_size or int(round(np.sqrt(token_dim // in_channels)))
  side = img_size or int(round(np.sqrt(num_tokens))) * p
  if p * p * in_channels != token_dim or (side // p) ** 2 != num_tokens:
    raise ValueError(f'cannot place {num_tokens} tokens of dim {token_dim} on a square image with '
                     f'in_channels={in_channels}, patch_size={p}, img_size={side}')
  if channels % head_dim:
    raise ValueError(f'channels {channels} not divisible by head_dim {head_dim}; pass head_dim=')
  if 'blocks.0.proj_out.weight' in state and state['blocks.0.proj_out.weight'].shape[0] != 2 * token_dim:
    raise ValueError('only affine (nvp=True) TARFlow checkpoints are supported')
  return ForwardFlow(image_shape=(side, side, in_channels), patch_size=p, channels=channels,
                     num_blocks=num_blocks, layers_per_block=layers,
                     num_heads=channels // head_dim, mlp_ratio=hidden // channels,
                     num_classes=num_classes, clip=None)


def _dense(state, name):
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def _norm(state, name):
  return {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}


def convert_params(state: Mapping[str, np.ndarray], flow: ForwardFlow) -> dict:
  """PyTorch TARFlow names -> the ForwardFlow params tree."""
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
  return params


def load(path: str | Path, *, in_channels: int | None = None, head_dim: int | None = None,
         patch_size: int | None = None, img_size: int | None = None) -> tuple[ForwardFlow, dict]:
  """(flow, params) from a TARFlow checkpoint; use as flow.apply({'params': params}, x, y)."""
  path = Path(path)
  state = {k: v.astype(np.float32) for k, v in read_state_dict(path).items()}
  args = _architecture_args(path, dict(in_channels=in_channels, head_dim=head_dim,
                                       patch_size=patch_size, img_size=img_size))
  flow = build_flow(state, in_channels=int(args['in_channels']), head_dim=int(args['head_dim']),
                    patch_size=args.get('patch_size'), img_size=args.get('img_size'))
  params = convert_params(state, flow)
  if 'var' in state and not np.allclose(state['var'], 1.0):
    warnings.warn(f'{path}: TARFlow learned a prior variance (var, mean '
                  f'{float(state["var"].mean()):.4g}); F here uses N(0, I), so scale sampling '
                  'noise by sqrt(var) yourself to reproduce its samples.')
  return flow, params
