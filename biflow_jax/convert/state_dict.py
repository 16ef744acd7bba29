"""Reading PyTorch state dicts without PyTorch: .npz and .safetensors always, .pth with torch."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

# Wrappers that prefix every name: DataParallel/DDP, torch.compile, checkpoint nesting.
STRIP_PREFIXES = ('module.', '_orig_mod.', 'model.')
NESTED_KEYS = ('model', 'state_dict', 'ema')


# safetensors dtype codes -> little-endian numpy dtypes ('BF16' is widened by hand).
_SAFETENSORS_DTYPES = {
    'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'BF16': '<u2', 'I64': '<i8', 'I32': '<i4',
    'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'U16': '<u2', 'U32': '<u4', 'U64': '<u8',
    'BOOL': '?',
}
# A header bigger than this is a damaged or foreign file, not a real checkpoint index.
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
  """bfloat16 stored as uint16 -> float32: bf16 is the top half of a float32."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A .safetensors file -> numpy arrays, numpy only (no `safetensors` package).

  Layout: 8-byte little-endian header length N, N bytes of JSON mapping each name to
  {dtype, shape, data_offsets [begin, end)} relative to the byte buffer after the header.
  Floating-point tensors come back as float32 (F16/BF16/F64 widened or narrowed, as the
  .pth path's `.float()` does); integer and bool tensors keep their dtype.
  """
  path = Path(path)
  size = path.stat().st_size
  if size < 8:
    raise ValueError(f'{path} is not a safetensors file: {size} bytes, no header')
  data = np.memmap(path, dtype=np.uint8, mode='r')
  header_len = int(data[:8].view('<u8')[0])
  if header_len > min(_MAX_SAFETENSORS_HEADER, data.size - 8):
    raise ValueError(f'{path} is not a safetensors file (or is truncated): header length '
                     f'{header_len} for a file of {data.size} bytes')
  try:
    header = json.loads(bytes(data[8:8 + header_len]).decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: unreadable safetensors header ({e})') from e
  buffer = data[8 + header_len:]
  arrays = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    try:
      code, shape = info['dtype'], tuple(int(d) for d in info['shape'])
      begin, end = (int(o) for o in info['data_offsets'])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{path}: safetensors entry {name!r} lacks a valid dtype/shape/'
                       f'data_offsets ({info!r})') from e
    if code not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has dtype {code}, which this reader does not '
                       f'support ({sorted(_SAFETENSORS_DTYPES)}); re-save it as F32 or F16')
    dtype = np.dtype(_SAFETENSORS_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected or end > buffer.size or begin < 0:
      raise ValueError(f'{path}: tensor {name!r} ({code}, shape {shape}) needs {expected} bytes '
                       f'but its data_offsets are [{begin}, {end}) in a {buffer.size}-byte buffer; '
                       'the file is damaged or truncated')
    value = np.frombuffer(buffer[begin:end].tobytes(), dtype=dtype).reshape(shape)
    if code == 'BF16':
      value = bfloat16_bits_to_float32(value)
    elif dtype.kind == 'f':
      value = value.astype(np.float32)
    arrays[name] = value
  return arrays


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """PyTorch names -> numpy arrays, from a .pth/.pt/.bin (needs torch), .safetensors or .npz.

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
  elif path.suffix == '.safetensors':
    arrays = read_safetensors(path)
  elif path.suffix in ('.pth', '.pt', '.bin'):
    try:
      import torch  # pylint: disable=g-import-not-at-top  # optional: only .pth/.bin need it
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
    raise ValueError(f'unsupported checkpoint type {path.suffix!r}: '
                     'use .pth/.pt/.bin, .safetensors or .npz')
  cleaned = {}
  for name, value in arrays.items():
    for prefix in STRIP_PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
    cleaned[name] = value
  return cleaned
