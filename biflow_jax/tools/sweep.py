"""A fair search over guidance w and temperature t for one decoder, scored like --mode=eval.

    python -m biflow_jax.tools.sweep --config=configs/mnist.py --workdir=workdir/mnist \
        --decoder=reverse --cells=16 [--w=0,0.5,1] [--t=0.85,1,1.15] [--out=DIR]

The run is used as it was trained (`restore.config_for_mode`, as `--mode=eval` does): its own
model and whether it has G; --config gives the sampling and evaluation settings. Every cell
is scored exactly as `--mode=eval` scores a decoder (`modes/evaluate.py`:
`eval.num_samples` class-balanced samples from the same seeds, the same feature net,
the same cached real held-out statistics), so a cell and `--mode=eval` at that w and t
give the same numbers.

The search, with a budget of `--cells` cells per decoder (give both decoders the same):
1. Score the starting grid (--w x --t).
2. Extend: while a lattice neighbour (one step in w or t, the grid's own spacing) of the
   best cell by Frechet distance is unscored and inside the limits, score it. This stops
   when the best cell's neighbours are all scored, i.e. when FD no longer improves at
   the grid's edges ('converged'), or when the budget is spent ('budget').
3. Refine: with budget left, halve both spacings around the best cell and extend again,
   until the budget is spent.
The budget can run out during a refinement with the final best cell's neighbours unscored.
The result therefore names the finest spacing at which all of the best cell's neighbours
inside the limits were scored (`best_resolved_at`; null when none was: the best cell is then not
known to be a local minimum at any spacing), and those unscored neighbours
(`best_unscored_neighbours`), so they can be scored (`--cells=1 --w=.. --t=..`) before the best
cell is read as final.
`--fix_w` searches t only, at the one --w given (e.g. w = 0, the paper's unguided protocol).
Limits: w >= 0; t > 0; for G guided through its input (training-time CFG,
sample.reverse_cfg='input') w <= objective.cfg_w_max, the range it was trained on.

Writes <out>/sweep_<decoder>.json (every cell, the best, whether the search converged,
the commands) and .md (a w x t table of FD / class accuracy / precision / recall).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from biflow_jax import config_lib
from biflow_jax.evaluation import features
from biflow_jax.inference import decoders, sampling
from biflow_jax.modes import evaluate
from biflow_jax.runtime import cli, console, files, parallel
from biflow_jax.training import posthoc_ema, restore

Cell = tuple[float, float]  # (w, t)
Scorer = Callable[[float, float], dict[str, Any]]

DEFAULT_GRIDS = {'reverse': ((0.0, 0.5, 1.0), (0.85, 1.0, 1.15)),
                 'exact': ((0.0, 0.5, 1.0), (0.7, 0.85, 1.0)),
                 'fixed_point': ((0.0, 0.5, 1.0), (0.7, 0.85, 1.0))}


def _key(w: float, t: float) -> Cell:
  return (round(float(w), 6), round(float(t), 6))


def _spacing(values: Sequence[float], fallback: float) -> float:
  values = sorted(set(values))
  return min(b - a for a, b in zip(values, values[1:])) if len(values) > 1 else fallback


def within_limits(w: float, t: float, w_min: float, w_max: float | None) -> bool:
  """Whether a cell may be scored: w_min <= w <= w_max (None = no limit) and t > 0."""
  return w >= w_min - 1e-9 and t > 1e-9 and (w_max is None or w <= w_max + 1e-9)


def smallest_w(ws: Sequence[float], fix_w: bool) -> float:
  """The search's lower w limit: the one w of a fixed-w search, else 0."""
  return float(ws[0]) if fix_w else 0.0


class Search:
  """The lattice search of the module docstring over a `score(w, t) -> metrics` function.

  w_max: the largest w allowed (None = no limit), w_min the smallest. `cells` holds every
  scored cell's metrics by (w, t), in scoring order.
  """

  def __init__(self, score: Scorer, budget: int, w_max: float | None = None,
               metric: str = 'frechet_distance', w_min: float = 0.0):
    if budget < 1:
      raise ValueError(f'--cells={budget}: the budget must be at least one cell')
    self.score, self.budget, self.w_max, self.metric = score, int(budget), w_max, metric
    self.w_min = float(w_min)
    self.cells: dict[Cell, dict[str, Any]] = {}
    self.stopped = ''
    self.spacings: list[tuple[float, float]] = []  # (dw, dt) of each extension, coarse first

  def allowed(self, w: float, t: float) -> bool:
    return within_limits(w, t, self.w_min, self.w_max)

  def _score(self, w: float, t: float) -> bool:
    """Scores a cell unless it is known, outside the limits or over budget; True if it did."""
    key = _key(w, t)
    if key in self.cells or not self.allowed(*key) or len(self.cells) >= self.budget:
      return False
    self.cells[key] = self.score(*key)
    logging.info('sweep cell %d/%d w=%g t=%g: %s %.3f', len(self.cells), self.budget, *key,
                 self.metric, self.cells[key][self.metric])
    return True

  def best(self) -> Cell:
    return min(self.cells, key=lambda c: (self.cells[c][self.metric], c))

  def unscored_neighbours(self, cell: Cell, dw: float, dt: float) -> list[Cell]:
    """`cell`'s lattice neighbours (one step dw in w or dt in t) inside the limits and not
    yet scored."""
    w, t = cell
    steps = [_key(w + a * dw, t + b * dt) for a, b in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    return [c for c in steps if self.allowed(*c) and c not in self.cells]

  def best_resolved_at(self) -> tuple[float, float] | None:
    """The finest (dw, dt) searched at which every neighbour of the best cell is scored;
    None when there is none."""
    best = self.best()
    for dw, dt in sorted(set(self.spacings)):
      if not self.unscored_neighbours(best, dw, dt):
        return (dw, dt)
    return None

  def best_unscored_neighbours(self) -> list[Cell]:
    """The best cell's unscored neighbours at the finest spacing searched."""
    if not self.spacings:
      return []
    return self.unscored_neighbours(self.best(), *min(self.spacings))

  def _extend(self, dw: float, dt: float) -> bool:
    """Scores the best cell's unscored neighbours until none is left; False if the budget
    ran out first."""
    self.spacings.append(_key(dw, dt))
    while True:
      pending = self.unscored_neighbours(self.best(), dw, dt)
      if not pending:
        return True
      if len(self.cells) >= self.budget:
        return False
      self._score(*pending[0])

  def run(self, ws: Sequence[float], ts: Sequence[float]) -> Cell:
    if len(ws) * len(ts) > self.budget:
      raise ValueError(f'the starting grid has {len(ws)} x {len(ts)} cells, more than the '
                       f'budget --cells={self.budget}')
    for w in ws:
      for t in ts:
        self._score(w, t)
    dw, dt = _spacing(ws, 0.5), _spacing(ts, 0.15)
    converged = self._extend(dw, dt)
    self.stopped = 'converged' if converged else 'budget'
    for _ in range(20):  # refinements; each scores at least one new cell (t + dt is allowed)
      if not converged or len(self.cells) >= self.budget:
        break
      dw, dt = dw / 2, dt / 2
      converged = self._extend(dw, dt)
    return self.best()

  def records(self) -> list[dict[str, Any]]:
    """Every scored cell as the result JSON stores it: {'w', 't', **its metrics}, in the
    order scored."""
    return [dict(w=w, t=t, **metrics) for (w, t), metrics in self.cells.items()]

  def converged(self) -> bool:
    """True when FD stopped improving at the starting grid's edges (its own spacing)
    before the budget ran out."""
    return self.stopped == 'converged'


def replay(result: dict[str, Any], extra_cells: Sequence[dict[str, Any]] = ()) -> Search:
  """The search that wrote `result` (a sweep JSON), rebuilt from its stored scores, with
  `extra_cells` (cells of later sweeps of the same run and decoder, e.g. `--cells=1`
  completions) added after it. Its `best()`, `best_resolved_at()` and
  `best_unscored_neighbours()` then answer for results written before those fields existed,
  or for a best completed by hand.

  ValueError when the stored scores do not reproduce the stored cells (a JSON edited or
  merged by hand, or written by another search).
  """
  stored = {_key(c['w'], c['t']): _metrics(c) for c in result['cells']}

  def stored_score(w: float, t: float) -> dict[str, Any]:
    if (w, t) not in stored:
      raise ValueError(f'the replay asks for cell (w {w:g}, t {t:g}), which the result does '
                       'not hold: it was not written by this search')
    return stored[(w, t)]

  search = Search(stored_score, int(result['budget']), result['w_max'],
                  w_min=smallest_w(result['start_grid']['w'], bool(result.get('fix_w'))))
  search.run(result['start_grid']['w'], result['start_grid']['t'])
  if set(search.cells) != set(stored):
    raise ValueError(f'the replay scored {len(search.cells)} cells, the result holds '
                     f'{len(stored)}: it was not written by this search')
  for cell in extra_cells:
    search.cells.setdefault(_key(cell['w'], cell['t']), _metrics(cell))
  return search


def _metrics(cell: dict[str, Any]) -> dict[str, Any]:
  """A stored cell's metrics, without its w and t: what `Search.cells` holds per cell."""
  return {k: v for k, v in cell.items() if k not in ('w', 't')}


# ------------------------------------------------------------------- scoring a run


def cell_config(config: ml_collections.ConfigDict, decoder: str, w: float, t: float
                ) -> ml_collections.ConfigDict:
  """The config with `decoder` sampling at guidance w and temperature t."""
  cell = ml_collections.ConfigDict(config.to_dict())
  if decoder == 'reverse':
    cell.sample.reverse_guidance, cell.sample.reverse_temperature = float(w), float(t)
  else:
    cell.sample.guidance, cell.sample.temperature = float(w), float(t)
  return cell


def decoder_group(decoder: str) -> str:
  """The params group a decoder samples with: G ('reverse') or F ('forward')."""
  return 'reverse' if decoder == 'reverse' else 'forward'


def make_scorer(config: ml_collections.ConfigDict, workdir: epath.PathLike, decoder: str,
                ema_sigma_rel: float | None = None) -> tuple[Scorer, dict[str, Any]]:
  """score(w, t) for `decoder` of the run in `workdir`, as `--mode=eval` scores it, and
  what it scores against (step, feature net, reference).

  ema_sigma_rel: sample the decoder's group from its post-hoc EMA of that width, rebuilt
  from the run's snapshots at the checkpoint's step (training/posthoc_ema.py), instead of
  the EMA the run kept; FileNotFoundError when the run kept no snapshots."""
  config_lib.validate(config)
  if decoder not in evaluate.decoders_to_evaluate(config):
    raise ValueError(f'--decoder={decoder!r}: this config has '
                     f'{evaluate.decoders_to_evaluate(config)}')
  if config.eval.reference:
    raise ValueError('tools/sweep scores against the held-out split; unset '
                     'config.eval.reference')
  net = features.make_feature_net(config)
  exp, state, step = restore.restore_run(config, workdir)
  params = parallel.local_copy(state.ema)
  averaged = {}
  if ema_sigma_rel is not None:
    group = decoder_group(decoder)
    rebuilt = posthoc_ema.reconstruct(workdir, group, ema_sigma_rel, int(step), params[group])
    params = dict(params, **{group: rebuilt.params})
    averaged = {'posthoc_ema': {'group': group, 'sigma_rel': rebuilt.sigma_rel,
                                'updates': rebuilt.updates, 'snapshots': rebuilt.snapshots,
                                'profile_relative_error': rebuilt.relative_error}}
    logging.info('%s sampled from its post-hoc EMA, sigma_rel %g at update %d: %d snapshots, '
                 'profile fit error %.2g', group, rebuilt.sigma_rel, rebuilt.updates,
                 rebuilt.snapshots, rebuilt.relative_error)
  to_pixels = decoders.pixel_decoder(exp.models.frozen, parallel.local_copy(exp.frozen_params))
  real, record = evaluate.real_statistics(config, net, epath.Path(workdir) / 'eval_cache',
                                          to_pixels)
  num, batch = int(config.eval.num_samples), int(config.eval.batch)

  def score(w: float, t: float) -> dict[str, Any]:
    cell = cell_config(config, decoder, w, t)
    stream = evaluate.SampleBatches(cell, params, decoder, num, batch, to_pixels)
    metrics, _ = evaluate.score_against_heldout(stream, net, real, cell,
                                                f'sweep {decoder} w={w:g} t={t:g}')
    return dict(metrics, sampling_seconds=stream.seconds)

  return score, {'step': int(step), 'feature_net': net.name,
                 'reference': record['info'], 'num_samples': num, **averaged}


def w_limit(config, decoder: str) -> float | None:
  """G guided through its input knows only w < cfg_w_max; F's guidance is unbounded."""
  if decoder == 'reverse' and config.sample.reverse_cfg == 'input':
    return float(config.objective.cfg_w_max)
  return None


def _resolution_lines(result: dict[str, Any]) -> list[str]:
  """How far the best cell is known to be a local minimum (results without the fields,
  written before they existed, get no line)."""
  if 'best_resolved_at' not in result:
    return []
  resolved, open_cells = result['best_resolved_at'], result['best_unscored_neighbours']
  lines = []
  if resolved is None:
    lines.append('The best cell\'s neighbours were not all scored at any spacing searched.')
  else:
    lines.append(f'The best cell\'s neighbours are all scored at spacing '
                 f'w +-{resolved[0]:g}, t +-{resolved[1]:g} (those inside the limits).')
  if open_cells:
    lines.append('Unscored neighbours at the finest spacing: '
                 + ', '.join(f'(w {w:g}, t {t:g})' for w, t in open_cells)
                 + '; score them (`--cells=1 --w=W --t=T`) before reading the best as final.')
  return [' '.join(lines), '']


def _posthoc_lines(result: dict[str, Any]) -> list[str]:
  ema = result.get('posthoc_ema')
  if not ema:
    return []
  return [f"Weights: {ema['group']}'s post-hoc EMA, sigma_rel {ema['sigma_rel']:g} at its update "
          f"{ema['updates']} ({ema['snapshots']} snapshots; profile fit error "
          f"{ema['profile_relative_error']:.2g}).", '']


def markdown(result: dict[str, Any]) -> str:
  cells = result['cells']
  ws = sorted({c['w'] for c in cells})
  ts = sorted({c['t'] for c in cells})
  by = {(c['w'], c['t']): c for c in cells}
  best = result['best']
  lines = [f"# Sweep of `{result['decoder']}` (step {result['step']}, {len(cells)} cells, "
           f"{result['stopped']})", '',
           f"Cells: FD / class accuracy / precision / recall ({result['num_samples']} samples "
           f"each, {result['feature_net']} features). Best FD: w {best['w']:g}, t {best['t']:g}.",
           '', *_resolution_lines(result), *_posthoc_lines(result),
           '| w \\ t | ' + ' | '.join(f'{t:g}' for t in ts) + ' |',
           '|---|' + '---|' * len(ts)]
  for w in ws:
    row = []
    for t in ts:
      c = by.get((w, t))
      if c is None:
        row.append('')
        continue
      text = (f"{c['frechet_distance']:.1f} / {c.get('class_accuracy', float('nan')):.3f} / "
              f"{c['precision']:.2f} / {c['recall']:.2f}")
      row.append(f'**{text}**' if c is best else text)
    lines.append(f'| {w:g} | ' + ' | '.join(row) + ' |')
  lines += ['', f"Command: `{result['command']}`", '']
  return '\n'.join(lines)


def sweep(config, workdir: epath.PathLike, decoder: str, budget: int,
          ws: Sequence[float] | None = None, ts: Sequence[float] | None = None,
          out: epath.PathLike | None = None, command: str = '', fix_w: bool = False,
          ema_sigma_rel: float | None = None) -> dict[str, Any]:
  """Runs the search for one decoder of a trained run; writes and returns the result.

  ema_sigma_rel: the decoder's weights are its post-hoc EMA of that width (see
  make_scorer); the files are then named sweep_<decoder>_ema<sigma_rel>.json and .md.

  fix_w: search t only, at the one w of `ws` (e.g. w = 0, the paper's unguided protocol).
  ValueError, before the run is restored, when fix_w is given several w, when the fixed w
  lies outside [0, objective.cfg_w_max] for G guided through its input (it never trained
  there), or when no cell of the starting grid is inside the limits (w >= 0, t > 0, w <=
  that cfg_w_max); cells of a starting grid beyond the limits are otherwise skipped."""
  start = time.perf_counter()
  default_ws, default_ts = DEFAULT_GRIDS[decoder]
  ws, ts = list(ws or default_ws), list(ts or default_ts)
  if fix_w and len(set(ws)) != 1:
    raise ValueError(f'fix_w searches t at one w; got w = {ws}')
  limit = w_limit(config, decoder)
  if fix_w and not 0 <= ws[0] <= (math.inf if limit is None else limit + 1e-9):
    raise ValueError(f'fix_w at w = {ws[0]:g}: {decoder} takes w in [0, '
                     + ('inf)' if limit is None else f'{limit:g}], the range G was trained on '
                        '(objective.cfg_w_max)') + '; give --w inside it')
  w_max, w_min = (ws[0] if fix_w else limit), smallest_w(ws, fix_w)
  if not any(within_limits(*_key(w, t), w_min, w_max) for w in ws for t in ts):
    raise ValueError(f'no cell of the starting grid w = {ws} x t = {ts} is inside the limits '
                     f'(w >= 0, t > 0' + ('' if w_max is None else f', w <= {w_max:g}')
                     + '); give --w and --t inside them')
  if ema_sigma_rel is not None:
    config_lib.check_posthoc_sigma_rel(ema_sigma_rel, 'ema_sigma_rel=')
  score, scored_against = make_scorer(config, workdir, decoder, ema_sigma_rel)
  search = Search(score, budget, w_max, w_min=w_min)
  best = search.run(ws, ts)
  cells = search.records()
  result = {'decoder': decoder, **scored_against, 'budget': budget, 'stopped': search.stopped,
            'converged': search.converged(), 'w_max': search.w_max, 'fix_w': fix_w,
            'best_resolved_at': search.best_resolved_at(),
            'best_unscored_neighbours': search.best_unscored_neighbours(),
            'start_grid': {'w': ws, 't': ts}, 'cells': cells,
            'best': next(c for c in cells if (c['w'], c['t']) == best),
            'seconds': round(time.perf_counter() - start, 1), 'command': command}
  if parallel.is_main_process():
    out = epath.Path(out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    name = f'sweep_{decoder}' + ('' if ema_sigma_rel is None else f'_ema{ema_sigma_rel:g}')
    files.write_text_atomic(out / f'{name}.json', json.dumps(result, indent=2, allow_nan=False))
    files.write_text_atomic(out / f'{name}.md', markdown(result))
    logging.info('sweep %s: best w=%g t=%g FD %.3f (%d cells, %s) -> %s', decoder,
                 result['best']['w'], result['best']['t'], result['best']['frechet_distance'],
                 len(cells), search.stopped, out / f'{name}.json')
    if result['best_resolved_at'] is None:
      logging.warning('sweep %s: the best cell is not a local minimum at any spacing searched; '
                      'its unscored neighbours: %s', decoder,
                      ', '.join(f'w={w:g} t={t:g}' for w, t in result['best_unscored_neighbours']))
  return result


def _floats(text: str, flag: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise app.UsageError(f'--{flag}={text!r}: give comma-separated numbers') from None
  if any(not math.isfinite(v) for v in values):
    raise app.UsageError(f'--{flag}={text!r}: every value must be finite')
  return values


def main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
  flags.DEFINE_string('workdir', None, 'A trained run (its latest checkpoint is scored).')
  flags.DEFINE_enum('decoder', 'reverse', list(sampling.DECODERS), 'The decoder to sweep.')
  flags.DEFINE_integer('cells', 16, 'Cells scored (the same for every decoder compared).')
  flags.DEFINE_string('w', '', 'Starting guidance values (default per decoder).')
  flags.DEFINE_string('t', '', 'Starting temperatures (default per decoder).')
  flags.DEFINE_string('out', '', 'Output folder (default: the workdir).')
  flags.DEFINE_bool('fix_w', False, 'Search t only, at the one value of --w (e.g. --w=0, '
                    "the paper's unguided protocol).")
  flags.DEFINE_float('ema_sigma_rel', None, "Sample the decoder from its post-hoc EMA of this "
                     'relative width (0.05-0.25; the default EMA, ema_warmup 10, is 0.09), '
                     'rebuilt from the snapshots a run trained with '
                     'config.optim.<group>.posthoc_sigma_rels kept.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run(_):
    f = flags.FLAGS
    if f.fix_w and len(set(_floats(f.w, 'w'))) != 1:
      raise app.UsageError(f'--fix_w searches t at one w: give --w one value (got {f.w!r})')
    console.setup(f.workdir, 0)
    # The run is scored as it was trained, like --mode=eval (restore.config_for_mode): its
    # own model and whether it has G; the sampling and evaluation settings from --config.
    config = restore.config_for_mode(
        f.config, f.workdir, config_flags.get_override_values(f['config']),
        f"--config={config_flags.get_config_filename(f['config'])}")
    sweep(config, f.workdir, f.decoder, f.cells, _floats(f.w, 'w') or None,
          _floats(f.t, 't') or None, f.out or None, fix_w=f.fix_w,
          ema_sigma_rel=f.ema_sigma_rel,
          command=' '.join(['python -m biflow_jax.tools.sweep'] + sys.argv[1:]))

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
