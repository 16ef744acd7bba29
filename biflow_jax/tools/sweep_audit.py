"""Whether a sweep's best cell is a local minimum: its stored search replayed, with cells
scored later added.

    python -m biflow_jax.tools.sweep_audit RUN/sweep_exact.json [MORE/sweep_exact.json ...]

The first JSON is a `tools/sweep` result; the others are later sweeps of the same run and
decoder (e.g. `--cells=1 --w=W --t=T` completions), whose cells are added to it. Prints the
best cell, the finest spacing at which its neighbours (inside the limits) are all scored,
and the ones still unscored, i.e. the cells to score next before the best is read as final
(`sweep.replay`). Reads JSON only; nothing is sampled.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from etils import epath

from biflow_jax.tools import sweep


def audit(paths: Sequence[str]) -> dict:
  """{'best', 'frechet_distance', 'cells', 'best_resolved_at', 'best_unscored_neighbours'}
  for the sweep in paths[0] with the cells of paths[1:] added.

  ValueError when a later sweep is of another decoder or step, or the first does not replay.
  """
  if not paths:
    raise ValueError('give at least one sweep JSON (tools/sweep writes <out>/sweep_<decoder>.json)')
  results = [json.loads(epath.Path(p).read_text()) for p in paths]
  main = results[0]
  for path, other in zip(paths[1:], results[1:]):
    if (other['decoder'], other['step']) != (main['decoder'], main['step']):
      raise ValueError(f'{path}: decoder {other["decoder"]} at step {other["step"]}, but '
                       f'{paths[0]} is {main["decoder"]} at step {main["step"]}; add only '
                       'sweeps of the same run and decoder')
  search = sweep.replay(main, [c for other in results[1:] for c in other['cells']])
  best = search.best()
  return {'best': best, 'frechet_distance': search.cells[best]['frechet_distance'],
          'cells': len(search.cells), 'best_resolved_at': search.best_resolved_at(),
          'best_unscored_neighbours': search.best_unscored_neighbours()}


def main(argv: Sequence[str] | None = None) -> int:
  paths = list(sys.argv[1:] if argv is None else argv)
  try:
    report = audit(paths)
  except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
    print(f'sweep_audit: {type(e).__name__}: {e}', file=sys.stderr)
    return 2
  print(json.dumps(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
