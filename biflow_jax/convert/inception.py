"""Import pytorch-fid's FID InceptionV3 weights into `biflow_jax.evaluation.inception`.

The weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (the TF FID
Inception ported to PyTorch), published as a GitHub release asset of mseitzer/pytorch-fid:
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
Nothing is ever downloaded here. Give the file to `load_fid_inception(path)` or set the
environment variable BIFLOW_FID_WEIGHTS to its path. Reading the `.pth` needs torch
(optional); without torch, convert it once to `.npz` on a machine that has torch:

  import torch, numpy as np
  sd = torch.load('pt_inception-2015-12-05-6726825d.pth', map_location='cpu')
  np.savez('pt_inception-2015-12-05-6726825d.npz', **{k: v.numpy() for k, v in sd.items()})

An `.npz` may also name its arrays `param/<name>`. `num_batches_tracked` and `AuxLogits.*`
entries are ignored; any other unknown, missing or mis-shaped entry is an error.

Layout: conv weight (out, in, kh, kw) -> kernel (kh, kw, in, out); BatchNorm
weight/bias -> params scale/bias, running_mean/running_var -> batch_stats mean/var;
fc.weight (1008, 2048) -> kernel (2048, 1008).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from biflow_jax.convert.state_dict import read_state_dict
from biflow_jax.models import inception

ENV_VAR = 'BIFLOW_FID_WEIGHTS'
WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               + WEIGHTS_NAME)
_IGNORED_SUFFIXES = ('num_batches_tracked',)
_IGNORED_PREFIXES = ('AuxLogits.',)

HOW_TO_GET_WEIGHTS = f"""\
The FID Inception weights are pytorch-fid's {WEIGHTS_NAME}, a GitHub release asset of
mseitzer/pytorch-fid ({WEIGHTS_URL}). biflow_jax never downloads them. Fetch the file on a
machine with network access; if torch is not installed where you evaluate, convert it to
.npz on a machine that has torch:

  import torch, numpy as np
  sd = torch.load('{WEIGHTS_NAME}', map_location='cpu')
  np.savez('{WEIGHTS_NAME[:-4]}.npz', **{{k: v.numpy() for k, v in sd.items()}})

then pass its path to load_fid_inception(path) (or the evaluation config's weights path), or
set the environment variable {ENV_VAR}=/path/to/{WEIGHTS_NAME[:-4]}.npz (or the .pth)."""


def resolve_path(path: str | os.PathLike | None = None) -> Path:
  """The weights file: `path`, else $BIFLOW_FID_WEIGHTS; FileNotFoundError if absent."""
  if path is None:
    path = os.environ.get(ENV_VAR) or None
  if path is None:
    raise FileNotFoundError(f'no FID Inception weights given (argument or ${ENV_VAR}).\n'
                            + HOW_TO_GET_WEIGHTS)
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'FID Inception weights not found at {path}.\n' + HOW_TO_GET_WEIGHTS)
  return path


def _torch_name(collection: str, path: tuple[str, ...]) -> tuple[str, str]:
  """(PyTorch name, transform) for one leaf of the Flax variables tree."""
  *modules, leaf = path
  prefix = '.'.join(modules)
  if collection == 'batch_stats':
    return f'{prefix}.running_{leaf}', 'copy'
  if leaf == 'kernel':
    return f'{prefix}.weight', ('conv' if modules[-1] == 'conv' else 'dense')
  if leaf == 'scale':
    return f'{prefix}.weight', 'copy'
  return f'{prefix}.{leaf}', 'copy'


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """pytorch-fid FID Inception state dict -> {'params', 'batch_stats'} for InceptionV3."""
  expected = inception.variable_shapes()
  used, missing, mismatched = set(), [], []

  def convert(key_path, spec):
    collection = key_path[0].key
    path = tuple(k.key for k in key_path[1:])
    name, how = _torch_name(collection, path)
    if name not in state:
      missing.append(name)
      return None
    used.add(name)
    value = np.asarray(state[name], dtype=np.float32)
    if how == 'conv':
      value = value.transpose(2, 3, 1, 0)
    elif how == 'dense':
      value = value.T
    if value.shape != tuple(spec.shape):
      mismatched.append(f'{name}: {np.shape(state[name])} -> {value.shape}, want {spec.shape}')
      return None
    return np.ascontiguousarray(value)

  variables = jax.tree_util.tree_map_with_path(convert, expected)
  unexpected = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES)
                      and not k.startswith(_IGNORED_PREFIXES))
  if missing or mismatched or unexpected:
    raise ValueError('not a pytorch-fid FID Inception state dict:'
                     + (f'\n missing ({len(missing)}): {missing[:8]}' if missing else '')
                     + (f'\n wrong shape: {mismatched[:8]}' if mismatched else '')
                     + (f'\n unexpected ({len(unexpected)}): {unexpected[:8]}' if unexpected else ''))
  return jax.tree.map(jax.numpy.asarray, variables)


def load_fid_inception(path: str | os.PathLike | None = None) -> dict:
  """Variables for `inception.InceptionV3` / `inception.fid_features` from the weights file.

  path: a pytorch-fid `.pth` (needs torch) or an `.npz` of the same names; default
  $BIFLOW_FID_WEIGHTS. Missing file -> FileNotFoundError explaining where to get it.
  """
  return convert_state_dict(read_state_dict(resolve_path(path)))
