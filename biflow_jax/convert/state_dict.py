"""Reading PyTorch state dicts without needing PyTorch: .npz always, .pth when torch is there."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

# Wrappers that prefix every name: DataParallel/DDP, torch.compile, checkpoint nesting.
STRIP_PREFIXES = ('module.', '_orig_mod.', 'model.')
NESTED_KEYS = ('model', 'state_dict', 'ema')


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """PyTorch names -> numpy arrays, from a .pth/.pt/.bin (needs torch) or an .npz.

  In an .npz, arrays under a `param/` prefix are the state dict and everything else is
  ignored (reference files keep inputs and outputs beside the weights).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path} does not exist')
  if path.suffix == '.npz':
    with np.load(path) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
    if any(k.startswith('param/') for k in arrays):
      arrays = {k[len('param/'):]: v for k, v in arrays.items() if k.startswith('param/')}
  elif path.suffix in ('.pth', '.pt', '.bin'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          f'reading {path} needs PyTorch (pip install torch), or convert it to .npz on a '
          'machine that has torch:\n  import torch, numpy as np\n'
          f"  sd = torch.load('{path.name}', map_location='cpu')\n"
          f"  np.savez('{path.stem}.npz', **{{k: v.numpy() for k, v in sd.items()}})") from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    for key in NESTED_KEYS:
      if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
    arrays = {k: v.detach().float().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}
  else:
    raise ValueError(f'unsupported checkpoint type {path.suffix!r}: use .pth/.pt or .npz')
  cleaned = {}
  for name, value in arrays.items():
    for prefix in STRIP_PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
    cleaned[name] = value
  return cleaned
