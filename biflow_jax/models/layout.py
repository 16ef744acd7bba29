"""Parameter layouts of F and G: per-layer (unrolled) and stacked (scanned), and converters.

With `scan` off every layer has its own subtree (F: `blocks_i/layers_j/...`, G:
`blocks_k/...`); with `scan` on the layers of a stack are one subtree whose leaves
carry a leading axis (F: `blocks/layers/...` with leading axes (num_blocks,
layers_per_block), and `blocks/<embeddings, heads>` with (num_blocks,); G: `blocks/...`
with (depth,)). The maths is the same, so converting a checkpoint's params between the
layouts (`to_flow_layout`, `to_generator_layout`) loads it into either model. Leaves may
be numpy or jax arrays; numpy in gives numpy out.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

Params = Mapping[str, Any]


def _stack(leaves: list) -> Any:
  if all(isinstance(a, np.ndarray) for a in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def _tree_stack(trees: list[Any]) -> Any:
  if isinstance(trees[0], Mapping):
    keys = sorted(trees[0])
    for t in trees[1:]:
      if sorted(t) != keys:
        raise ValueError(f'cannot stack layers with different parameters: {keys} vs {sorted(t)}')
    return {k: _tree_stack([t[k] for t in trees]) for k in keys}
  return _stack(list(trees))


def _tree_index(tree: Any, i: int) -> Any:
  if isinstance(tree, Mapping):
    return {k: _tree_index(v, i) for k, v in tree.items()}
  return tree[i]


def _tree_length(tree: Any) -> int:
  while isinstance(tree, Mapping):
    tree = next(iter(tree.values()))
  return int(tree.shape[0])


def _numbered(params: Params, prefix: str) -> list[int]:
  pattern = re.compile(rf'^{re.escape(prefix)}_(\d+)$')
  found = sorted(int(m.group(1)) for m in map(pattern.match, params) if m)
  if found != list(range(len(found))):
    raise ValueError(f'{prefix}_* subtrees are not numbered 0..n-1: {found}')
  return found


def stack(params: Params, prefix: str) -> dict:
  """`prefix_0`, ..., `prefix_{n-1}` -> one `prefix` subtree with a leading axis n."""
  indices = _numbered(params, prefix)
  if not indices:
    raise ValueError(f'no {prefix}_0 subtree to stack (keys: {sorted(params)[:6]})')
  out = {k: v for k, v in params.items() if not re.fullmatch(rf'{re.escape(prefix)}_\d+', k)}
  out[prefix] = _tree_stack([params[f'{prefix}_{i}'] for i in indices])
  return out


def unstack(params: Params, prefix: str) -> dict:
  """Inverse of `stack`: `prefix` (leading axis n) -> `prefix_0`, ..., `prefix_{n-1}`."""
  if prefix not in params:
    raise ValueError(f'no stacked {prefix} subtree to unstack (keys: {sorted(params)[:6]})')
  out = {k: v for k, v in params.items() if k != prefix}
  tree = params[prefix]
  for i in range(_tree_length(tree)):
    out[f'{prefix}_{i}'] = _tree_index(tree, i)
  return out


def is_scanned(params: Params, model: str = 'F') -> bool:
  """True for the stacked layout (`blocks`), False for per-layer (`blocks_0`, ...).

  model names whose params these are ('F' or 'G') in the error for neither layout.
  """
  if 'blocks' in params:
    return True
  if 'blocks_0' in params:
    return False
  raise ValueError(f"not {model}'s params: neither blocks nor blocks_0 in {sorted(params)[:6]}")


def _each_block(params: Params, convert) -> dict:
  """params with convert(subtree) applied to every numbered `blocks_<i>` subtree."""
  return {k: convert(v) if re.fullmatch(r'blocks_\d+', k) else v for k, v in params.items()}


def _to_layout(params: Params, scan: bool, model: str, inner: str | None) -> dict:
  """The stacked (scan) or per-layer layout of one model's params. Its `blocks_<i>` are
  stacked into `blocks`; when `inner` is given (F), each block's `<inner>_<j>` first."""
  params = dict(params)
  if is_scanned(params, model) == scan:
    return params
  if scan:
    if inner:
      params = _each_block(params, lambda block: stack(block, inner))
    return stack(params, 'blocks')
  out = unstack(params, 'blocks')
  return _each_block(out, lambda block: unstack(block, inner)) if inner else out


def to_flow_layout(params: Params, scan: bool) -> dict:
  """F's params (either layout) in the stacked layout (scan=True) or per-layer (False):
  blocks and, inside each block, its layers."""
  return _to_layout(params, scan, 'F', inner='layers')


def to_generator_layout(params: Params, scan: bool) -> dict:
  """G's params (either layout) in the stacked layout (scan=True) or per-layer (False)."""
  return _to_layout(params, scan, 'G', inner=None)
