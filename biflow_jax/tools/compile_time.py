"""Compile time of F's NLL gradient against depth, unrolled (model.scan off) vs scanned (on).

  python -m biflow_jax.tools.compile_time [--depths=8x2,8x4,16x4] [--width=64] [--out=t.json]

Every (blocks x layers) is compiled in both layouts in one run, so the ratios compare like
with like on the same machine. The time is `jit(grad).lower(...).compile()` wall time
(tracing + XLA), each measured once on a fresh function (no cache hit). Needs only jax
and flax.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
from absl import app, flags

from biflow_jax.models.flow import ForwardFlow, gaussian_nll
from biflow_jax.runtime import tables


def _nll_grad(flow: ForwardFlow):
  def loss(params, x, y):
    z, logdet, _ = flow.apply({'params': params}, x, y)
    return jnp.mean(gaussian_nll(z, logdet))
  return jax.jit(jax.grad(loss))


def compile_seconds(num_blocks: int, layers_per_block: int, width: int, scan: bool,
                    remat: str = 'none', image_size: int = 28, patch_size: int = 4,
                    batch: int = 8) -> float:
  """Seconds to trace, lower and compile F's NLL gradient (abstract params: nothing runs)."""
  flow = ForwardFlow(image_shape=(image_size, image_size, 1), patch_size=patch_size,
                     channels=width, num_blocks=num_blocks, layers_per_block=layers_per_block,
                     num_heads=max(1, width // 32), num_classes=10, clip=3.0, scan=scan,
                     remat=remat)
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, 1), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  params = jax.eval_shape(lambda: flow.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype),
                                            jnp.zeros(y.shape, y.dtype)))['params']
  start = time.perf_counter()
  _nll_grad(flow).lower(params, x, y).compile()
  return time.perf_counter() - start


def table(depths: Sequence[tuple[int, int]], width: int, remat: str = 'none') -> dict:
  """{'BxL': {'unrolled_s', 'scanned_s'}} and each layout's deepest/shallowest ratio."""
  rows = {}
  for blocks, layers in depths:
    rows[f'{blocks}x{layers}'] = {
        'unrolled_s': compile_seconds(blocks, layers, width, scan=False),
        'scanned_s': compile_seconds(blocks, layers, width, scan=True, remat=remat)}
  first, last = rows[f'{depths[0][0]}x{depths[0][1]}'], rows[f'{depths[-1][0]}x{depths[-1][1]}']
  return {'width': width, 'remat': remat, 'backend': jax.default_backend(), 'rows': rows,
          'ratio_deepest_to_shallowest': {
              'unrolled': last['unrolled_s'] / first['unrolled_s'],
              'scanned': last['scanned_s'] / first['scanned_s']}}


def format_table(result: dict) -> str:
  lines = [f"F NLL gradient compile time (width {result['width']}, {result['backend']}; "
           f"scanned with remat={result['remat']})"]
  lines += tables.aligned([('blocks x layers', 'unrolled (s)', 'scanned (s)')] + [
      (name, f"{row['unrolled_s']:.2f}", f"{row['scanned_s']:.2f}")
      for name, row in result['rows'].items()])
  ratio = result['ratio_deepest_to_shallowest']
  lines.append(f"deepest / shallowest: unrolled {ratio['unrolled']:.2f}x, "
               f"scanned {ratio['scanned']:.2f}x")
  return '\n'.join(lines)


def parse_depths(text: str) -> list[tuple[int, int]]:
  """'8x2,16x4' -> [(8, 2), (16, 4)]; ValueError naming a malformed entry."""
  out = []
  for item in text.split(','):
    try:
      blocks, layers = (int(v) for v in item.lower().split('x'))
    except ValueError as e:
      raise ValueError(f'--depths entry {item!r} is not BLOCKSxLAYERS (e.g. 8x2)') from e
    out.append((blocks, layers))
  return out


def main(argv=None) -> None:
  flags.DEFINE_string('depths', '8x2,8x4,16x4', 'Comma-separated BLOCKSxLAYERS of F.')
  flags.DEFINE_integer('width', 64, "F's width.")
  flags.DEFINE_string('remat', 'none', 'Remat policy of the scanned layout.')
  flags.DEFINE_string('out', '', 'Also write the numbers to this JSON file.')

  def run(_):
    f = flags.FLAGS
    tables.report(table(parse_depths(f.depths), f.width, f.remat), format_table, f.out)

  app.run(run, argv=argv)


if __name__ == '__main__':
  main()
