"""Import PyTorch LPIPS-VGG and timm ConvNeXt-V2 weights into `models/perceptual_nets.py`.

Nothing is downloaded; see `LPIPS_HOW_TO` / `CONVNEXT_HOW_TO` below for
where the files come from. Files are read with `read_state_dict` (.npz, .safetensors,
.pth/.bin with torch).

LPIPS names accepted (one merged file or several files whose entries are merged):
  - trunk: lpips's `net.slice{s}.{i}.weight/bias` or torchvision's `features.{i}.weight/bias`
    (i the vgg16().features index; torchvision's `classifier.*` is ignored),
  - heads: lpips's `lin{k}.model.1.weight` or `lins.{k}.model.1.weight` (same tensors in
    an `LPIPS().state_dict()`), optionally prefixed `lin/` (the reference .npz layout),
  - `scaling_layer.shift/scale`: checked against the package constants, not imported.
ConvNeXt-V2: timm names (`stem.0`, `stages.N.downsample.0/1`, `stages.N.blocks.M.conv_dw`,
`.norm`, `.mlp.fc1/grn/fc2`, `head.norm`, `head.fc`); fc1/fc2 may be Linear (out, in) or
1x1 conv (out, in, 1, 1) weights. Missing `head.fc` -> a model with num_classes=0.

Layout: conv weight (out, in, kh, kw) -> kernel (kh, kw, in, out); Linear (out, in) ->
kernel (in, out); norm weight -> scale.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models import perceptual_nets as perceptual

PathLike = str | os.PathLike

# ------------------------------------------------------------------ where weights come from

LPIPS_HOW_TO = """\
LPIPS-VGG needs two sets of weights (biflow_jax never downloads anything):
  - the VGG16 trunk: torchvision's `vgg16-397923af.pth`
    (https://download.pytorch.org/models/vgg16-397923af.pth; names features.N.*),
  - the linear heads: the `lpips` pip package's `lpips/weights/v0.1/vgg.pth`
    (names lin0.model.1.weight .. lin4.model.1.weight).
Set config.perceptual.lpips_weights='/path/vgg16-397923af.pth,/path/vgg.pth' (trunk,heads),
or merge both into one file on a machine with network and torch:
  import lpips, numpy as np
  m = lpips.LPIPS(net='vgg')  # fetches the torchvision trunk, reads the package's heads
  np.savez('lpips_vgg.npz', **{k: v.numpy() for k, v in m.state_dict().items()})
and set config.perceptual.lpips_weights='/path/lpips_vgg.npz'. Files may be .pth/.bin
(needs torch), .safetensors or .npz."""

CONVNEXT_HOW_TO = """\
ConvNeXt-V2 weights are timm's convnextv2_{variant} checkpoint, e.g. the Hugging Face repo
timm/convnextv2_{variant}.fcmae_ft_in22k_in1k (atto/femto/pico have .fcmae_ft_in1k only),
file `model.safetensors` or `pytorch_model.bin` (biflow_jax never downloads it). Or, on a
machine with network and timm:
  import timm, numpy as np
  m = timm.create_model('convnextv2_{variant}.fcmae_ft_in22k_in1k', pretrained=True)
  np.savez('convnextv2_{variant}.npz', **{{k: v.numpy() for k, v in m.state_dict().items()}})
Then set config.perceptual.convnext_weights to the file and
config.perceptual.convnext_variant='{variant}' to match it."""


def split_paths(value: str | Sequence[str] | None) -> list[str]:
  """'a,b' / ['a', 'b'] / '' / None -> the non-empty paths."""
  if value is None:
    return []
  parts = value.split(',') if isinstance(value, str) else list(value)
  return [str(p).strip() for p in parts if str(p).strip()]


def existing_paths(field: str, value, how_to: str) -> list[Path]:
  """The files named by config.perceptual.<field>; FileNotFoundError naming the field."""
  paths = split_paths(value)
  if not paths:
    raise FileNotFoundError(f'config.perceptual.{field} is empty but its term has weight > 0 '
                            f'(set the weight to 0 to turn it off).\n{how_to}')
  paths = [Path(p).expanduser() for p in paths]
  for p in paths:
    if not p.is_file():
      raise FileNotFoundError(f'config.perceptual.{field}: file {p} not found.\n{how_to}')
  return paths


# ----------------------------------------------------------------------------- shared


def _expected_params(model, *inputs) -> dict:
  """Parameter shapes of `model` (no compute)."""
  return jax.eval_shape(model.init, jax.random.key(0), *inputs)['params']


def _to_flax(name: str, value: np.ndarray, want: tuple[int, ...], leaf: str) -> np.ndarray:
  """A PyTorch tensor -> the Flax layout of a `leaf` ('kernel', 'scale', 'bias', ...)."""
  value = np.asarray(value, np.float32)
  if leaf == 'kernel':
    if value.ndim == 4 and len(want) == 2:  # 1x1 conv used as Linear
      if value.shape[2:] != (1, 1):
        raise ValueError(f'{name}: shape {value.shape} is not a 1x1 conv / Linear weight')
      value = value[:, :, 0, 0]
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
      value = value.T
  return np.ascontiguousarray(value)


def _read_all(paths: PathLike | Sequence[PathLike]) -> dict[str, np.ndarray]:
  """Merge the state dicts of one or several files (later files win on a clash)."""
  if isinstance(paths, (str, os.PathLike)):
    paths = split_paths(str(paths))
  if not paths:
    raise FileNotFoundError('no weights file given.\n' + LPIPS_HOW_TO)
  state = {}
  for path in paths:
    state.update(read_state_dict(path))
  return state


# ----------------------------------------------------------------------------- LPIPS

_SLICE_OF = {i: s + 1 for s, convs in enumerate(perceptual.VGG16_SLICES) for i in convs}
_TRUNK = re.compile(r'^(?:net\.slice(\d)\.|features\.)(\d+)\.(weight|bias)$')
_HEAD = re.compile(r'^(?:lin|lins\.)(\d)\.model\.1\.weight$')


def convert_lpips_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """LPIPS / torchvision VGG16 (+ lpips heads) state dict -> `perceptual.LPIPS` params."""
  expected = _expected_params(perceptual.LPIPS(), jnp.zeros((1, 32, 32, 3)),
                              jnp.zeros((1, 32, 32, 3)))
  params = {'net': {}}
  unexpected, mismatched = [], []
  for key, value in state.items():
    name = key.removeprefix('lin/')
    if name.startswith('classifier.'):
      continue  # torchvision's VGG16 classifier: not used by LPIPS
    if name.startswith('scaling_layer.'):
      const = {'scaling_layer.shift': perceptual.LPIPS_SHIFT,
               'scaling_layer.scale': perceptual.LPIPS_SCALE}.get(name)
      if const is None or not np.allclose(np.ravel(value), const, rtol=0, atol=1e-6):
        raise ValueError(f'{key} = {np.ravel(value)} is not the lpips 0.1.4 constant {const}; '
                         'these are not the LPIPS-VGG weights biflow_jax implements')
      continue
    if m := _TRUNK.match(name):
      sl, index, kind = m.group(1), int(m.group(2)), m.group(3)
      if index not in _SLICE_OF or (sl is not None and int(sl) != _SLICE_OF[index]):
        unexpected.append(key)
        continue
      module, leaf = f'conv{index}', ('kernel' if kind == 'weight' else 'bias')
      want = expected['net'][module][leaf].shape
      out = params['net'].setdefault(module, {})
    elif m := _HEAD.match(name):
      module, leaf = f'lin{m.group(1)}', 'kernel'
      if module not in expected:
        unexpected.append(key)
        continue
      want = expected[module][leaf].shape
      out = params.setdefault(module, {})
    else:
      unexpected.append(key)
      continue
    value = _to_flax(key, value, want, leaf)
    if value.shape != tuple(want):
      mismatched.append(f'{key}: {np.shape(state[key])} -> {value.shape}, want {tuple(want)}')
      continue
    out[leaf] = value
  missing = [f'trunk conv {m} ({leaf})' for m, leaves in expected['net'].items()
             for leaf in leaves if leaf not in params['net'].get(m, {})]
  missing += [f'head {m} (lin{m[3:]}.model.1.weight)' for m in expected
              if m != 'net' and m not in params]
  if missing or mismatched or unexpected:
    raise ValueError('not LPIPS-VGG v0.1 weights:'
                     + (f'\n missing ({len(missing)}): {missing[:8]}' if missing else '')
                     + (f'\n wrong shape: {mismatched[:8]}' if mismatched else '')
                     + (f'\n unexpected ({len(unexpected)}): {sorted(unexpected)[:8]}'
                        if unexpected else '')
                     + '\n' + LPIPS_HOW_TO)
  return jax.tree.map(jnp.asarray, params)


def load_lpips_params(paths: PathLike | Sequence[PathLike]) -> dict:
  """`perceptual.LPIPS` params from one merged file or 'trunk,heads' (str or sequence)."""
  return convert_lpips_state_dict(_read_all(paths))


# ----------------------------------------------------------------------------- ConvNeXt-V2

_DOTTED = re.compile(r'^(stem|stages|blocks|downsample|head)_(.+)$')
_LEAF = {'kernel': 'weight', 'scale': 'weight'}


def _timm_name(path: tuple[str, ...]) -> str:
  """Flax path ('stages_1', 'blocks_0', 'mlp', 'fc1', 'kernel') -> timm name."""
  *modules, leaf = path
  return '.'.join([_DOTTED.sub(r'\1.\2', m) for m in modules] + [_LEAF.get(leaf, leaf)])


def guess_convnext_variant(state: Mapping[str, np.ndarray]) -> str | None:
  """The CONVNEXT_VARIANTS key whose dims/depths match a timm state dict, if any."""
  if 'stem.0.weight' not in state:
    return None
  dims, depths = [], []
  for stage in range(4):
    blocks = {int(m.group(1)) for k in state
              if (m := re.match(rf'^stages\.{stage}\.blocks\.(\d+)\.', k))}
    depths.append(len(blocks))
    key = f'stages.{stage}.blocks.0.conv_dw.bias'
    dims.append(int(np.shape(state[key])[0]) if key in state else 0)
  for name, spec in perceptual.CONVNEXT_VARIANTS.items():
    if (tuple(dims), tuple(depths)) == spec:
      return name
  return None


def convert_convnext_state_dict(state: Mapping[str, np.ndarray],
                                variant: str) -> tuple[perceptual.ConvNeXtV2, dict]:
  """timm convnextv2_* state dict -> (ConvNeXtV2 model, params) for `variant`."""
  num_classes = int(np.shape(state['head.fc.weight'])[0]) if 'head.fc.weight' in state else 0
  model = perceptual.convnext_model(variant, num_classes=num_classes)
  expected = _expected_params(model, jnp.zeros((1, 32, 32, 3)))
  used, missing, mismatched = set(), [], []

  def convert(key_path, spec):
    path = tuple(k.key for k in key_path)
    name = _timm_name(path)
    if name not in state:
      missing.append(name)
      return None
    used.add(name)
    value = _to_flax(name, state[name], spec.shape, path[-1])
    if value.shape != tuple(spec.shape):
      mismatched.append(f'{name}: {np.shape(state[name])} -> {value.shape}, '
                        f'want {tuple(spec.shape)}')
      return None
    return jnp.asarray(value)

  params = jax.tree_util.tree_map_with_path(convert, expected)
  unexpected = sorted(k for k in state if k not in used and not k.endswith('num_batches_tracked'))
  if missing or mismatched or unexpected:
    guess = guess_convnext_variant(state)
    want = variant.removeprefix('convnextv2_')
    if guess and guess != want:
      hint = (f"\nthe checkpoint looks like convnextv2_{guess}: set "
              f"config.perceptual.convnext_variant='{guess}' (it is '{want}')")
    else:
      hint = ('\ncheck config.perceptual.convnext_variant (one of '
              f'{sorted(perceptual.CONVNEXT_VARIANTS)}) and that the file is a timm '
              'convnextv2_* checkpoint')
    raise ValueError(f'not timm convnextv2_{want} weights:'
                     + (f'\n missing ({len(missing)}): {missing[:8]}' if missing else '')
                     + (f'\n wrong shape: {mismatched[:8]}' if mismatched else '')
                     + (f'\n unexpected ({len(unexpected)}): {unexpected[:8]}'
                        if unexpected else '')
                     + hint)
  return model, params


def load_convnext_params(path: PathLike, variant: str) -> tuple[perceptual.ConvNeXtV2, dict]:
  """(ConvNeXtV2, params) from a timm convnextv2_<variant> checkpoint file."""
  return convert_convnext_state_dict(read_state_dict(path), variant)
