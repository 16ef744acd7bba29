"""Import a diffusers `AutoencoderKL` (the SD VAE) state dict into `models.vae.AutoencoderKL`.

Reads .safetensors (numpy only), .npz (a `param/` prefix is allowed) or .bin/.pth (needs
torch). Flax module names mirror diffusers names (`down_blocks_0` <-> `down_blocks.0`), so
every Flax param has exactly one source key; both the current attention names
(`to_q/to_k/to_v/to_out.0`) and the older ones (`query/key/value/proj_attn`, possibly
stored as 1x1 convs) are accepted. Shapes are checked both ways: a missing, extra or
wrongly shaped key is a ValueError naming the key and the config field to change.
GroupNorm's group count leaves no trace in the shapes, so `norm_num_groups` (32 for the
SD VAE) cannot be checked here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models.vae import AutoencoderKL, downsample_factor

# Flax list-style module names `<list>_<i>` that are `<list>.<i>` in diffusers.
_LISTS = ('down_blocks', 'up_blocks', 'resnets', 'attentions', 'downsamplers', 'upsamplers')
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
# Pre-0.15 diffusers (AttentionBlock) names -> current `Attention` names.
_OLD_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_OLD_ATTENTION_KEY = re.compile(
    r'^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$')
# Keys under these prefixes belong to the VAE and must all be used; others are ignored.
_VAE_PREFIXES = ('encoder.', 'decoder.', 'quant_conv.', 'post_quant_conv.')
_WEIGHTS_HELP = (
    'Download a diffusers SD VAE on a machine with network, e.g. '
    '`diffusion_pytorch_model.safetensors` from the Hugging Face repo stabilityai/sd-vae-ft-ema '
    '(or stabilityai/sd-vae-ft-mse), copy it here and set config.vae.weights to its path '
    '(.safetensors, .bin or an .npz of the state dict all work).')


def torch_name(flax_path: tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel') -> diffusers key."""
  parts = []
  for name in flax_path[:-1]:
    head, _, index = name.rpartition('_')
    if head in _LISTS and index.isdigit():
      parts += [head, index]
    elif name == 'to_out':
      parts += ['to_out', '0']
    else:
      parts.append(name)
  return '.'.join(parts + [_LEAVES[flax_path[-1]]])


def normalize_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rename old attention keys (`query`, ..., `proj_attn`) to `to_q`, ..., `to_out.0`."""
  out = {}
  for key, value in state.items():
    m = _OLD_ATTENTION_KEY.match(key)
    new = f'{m.group(1)}.{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}' if m else key
    if new in out:
      raise ValueError(f'state dict has both {key!r} and its other attention name {new!r}; '
                       'keep one naming (to_q/to_k/to_v/to_out.0 or query/key/value/proj_attn)')
    out[new] = value
  return out


def infer_config(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The AutoencoderKL fields the shapes reveal (whatever keys are present)."""
  found: dict[str, Any] = {}
  if 'encoder.conv_in.weight' in state:
    found['in_channels'] = int(state['encoder.conv_in.weight'].shape[1])
  if 'decoder.conv_out.weight' in state:
    found['out_channels'] = int(state['decoder.conv_out.weight'].shape[0])
  if 'decoder.conv_in.weight' in state:
    found['latent_channels'] = int(state['decoder.conv_in.weight'].shape[1])
  chans = []
  while f'encoder.down_blocks.{len(chans)}.resnets.0.conv1.weight' in state:
    chans.append(int(state[f'encoder.down_blocks.{len(chans)}.resnets.0.conv1.weight'].shape[0]))
  if chans:
    found['block_out_channels'] = tuple(chans)
    layers = 0
    while f'encoder.down_blocks.0.resnets.{layers}.conv1.weight' in state:
      layers += 1
    found['layers_per_block'] = layers
  return found


def _config_hint(state: Mapping[str, np.ndarray], model: AutoencoderKL) -> str:
  def canon(v):
    return tuple(v) if isinstance(v, (tuple, list)) else v
  diffs = [f'config.vae.{k}={canon(getattr(model, k))!r} but the checkpoint has {v!r}'
           for k, v in infer_config(state).items() if canon(getattr(model, k)) != v]
  if diffs:
    return 'Fix the config to match the checkpoint: ' + '; '.join(diffs) + '.'
  return ('Check config.vae.block_out_channels, layers_per_block, latent_channels and '
          'in_channels against the checkpoint (they look consistent, so the file may be '
          'damaged or not a diffusers AutoencoderKL).')


def _to_flax(value: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
  """Torch layout -> Flax layout: conv (out,in,kh,kw) -> (kh,kw,in,out); linear transposed."""
  if len(flax_shape) == 4 and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if len(flax_shape) == 2:
    if value.ndim == 4 and value.shape[2:] == (1, 1):  # attention stored as a 1x1 conv
      value = value[:, :, 0, 0]
    if value.ndim == 2:
      return value.T
  return value


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    kh, kw, cin, cout = flax_shape
    return (cout, cin, kh, kw)
  return tuple(reversed(flax_shape))


def param_shapes(model: AutoencoderKL) -> dict:
  """The params tree of `model.init` as ShapeDtypeStructs (nothing is allocated)."""
  side = downsample_factor(model)
  x = jax.ShapeDtypeStruct((1, side, side, model.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']


def convert_state_dict(state: Mapping[str, np.ndarray], model: AutoencoderKL) -> dict:
  """diffusers state dict -> Flax params for `model`; every param filled, every VAE key used."""
  state = normalize_names(state)
  flat_shapes = traverse_util.flatten_dict(param_shapes(model))
  flat, used, missing = {}, set(), []
  for path, spec in flat_shapes.items():
    key = torch_name(path)
    if key not in state:
      missing.append(key)
      continue
    value = _to_flax(np.asarray(state[key]), spec.shape)
    if value.shape != tuple(spec.shape):
      raise ValueError(
          f'VAE weight {key!r} has shape {tuple(np.shape(state[key]))} in the checkpoint but the '
          f'model expects {_torch_shape(spec.shape)} (torch layout). '
          + _config_hint(state, model))
    flat[path] = value.astype(np.float32)
    used.add(key)
  if missing:
    raise ValueError(
        f'{len(missing)} VAE weights are missing from the checkpoint, e.g. '
        f'{", ".join(repr(k) for k in missing[:5])}. ' + _config_hint(state, model))
  extra = sorted(k for k in state if k.startswith(_VAE_PREFIXES) and k not in used)
  if extra:
    raise ValueError(
        f'{len(extra)} VAE weights in the checkpoint have no place in the model, e.g. '
        f'{", ".join(repr(k) for k in extra[:5])}. ' + _config_hint(state, model))
  return traverse_util.unflatten_dict(flat)


def load_vae_params(path: str | os.PathLike, model: AutoencoderKL) -> dict:
  """Flax params (the tree `model.init` makes) from a diffusers AutoencoderKL checkpoint."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'VAE weights {str(path)!r} do not exist. {_WEIGHTS_HELP}')
  return convert_state_dict(read_state_dict(path), model)


def load(cfg: Any) -> tuple[AutoencoderKL, dict]:
  """(model, params) from `config.vae` (or the full config); weights from its `weights` field."""
  vae_cfg = getattr(cfg, 'vae', None)
  vae_cfg = cfg if vae_cfg is None else vae_cfg
  weights = getattr(vae_cfg, 'weights', '')
  if not weights:
    raise FileNotFoundError(f'config.vae.weights is empty: the SD VAE needs weights. '
                            f'{_WEIGHTS_HELP}')
  path = Path(weights).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'config.vae.weights={str(weights)!r} does not exist. {_WEIGHTS_HELP}')
  model = AutoencoderKL.from_config(vae_cfg)
  return model, load_vae_params(path, model)
