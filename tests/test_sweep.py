"""tools/sweep: the lattice search over (w, t), and its cells scored exactly like --mode=eval."""
import json

import numpy as np
import pytest

from biflow_jax.modes import evaluate
from biflow_jax.tools import sweep, sweep_audit
from biflow_jax.training import train
from subprocess_util import python
from test_train import TINY, parse_config


def bowl(w0: float, t0: float):
  calls = []

  def score(w, t):
    calls.append((w, t))
    return {'frechet_distance': (w - w0) ** 2 + 10 * (t - t0) ** 2}
  return score, calls


def test_search_walks_off_the_starting_grid_to_an_interior_minimum():
  score, calls = bowl(1.7, 0.95)
  search = sweep.Search(score, budget=16, w_max=3.0)
  w, t = search.run([0, 0.5, 1], [0.85, 1.0, 1.15])
  assert search.converged() and len(search.cells) == 16 == len(set(calls))
  assert abs(w - 1.7) <= 0.125 and abs(t - 0.95) <= 0.05  # found at the refined spacing
  # The best coarse cell (1.5, 1.0) has all four lattice neighbours scored.
  assert {(1.0, 1.0), (2.0, 1.0), (1.5, 0.85), (1.5, 1.15)} <= set(search.cells)


def test_search_respects_limits_and_reports_a_spent_budget():
  score, calls = bowl(9.0, 0.5)  # the minimum lies beyond w_max and below the grid's t
  search = sweep.Search(score, budget=12, w_max=2.0)
  w, _ = search.run([0, 1], [0.85, 1.0])
  assert all(c[0] <= 2.0 and c[1] > 0 for c in search.cells) and w == 2.0
  assert len(search.cells) == 12
  tight = sweep.Search(bowl(5.0, 1.0)[0], budget=5)
  tight.run([0, 1], [1.0, 1.5])
  assert tight.stopped == 'budget' and not tight.converged() and len(tight.cells) == 5
  with pytest.raises(ValueError, match='more than the budget'):
    sweep.Search(score, budget=3).run([0, 1], [1.0, 1.5])


def test_a_refinement_cut_by_the_budget_is_reported_with_the_cells_it_left():
  """The 2026-12-07 CIFAR-10 exact sweep's case: the coarse grid converged, the refinement
  moved the best cell off the coarse lattice and the budget ran out before its own
  neighbours were scored. The result must say so and name them."""
  search = sweep.Search(bowl(5.9, 1.04)[0], budget=14)
  best = search.run([2, 3.5, 5], [0.9, 1.0, 1.1])
  assert search.converged() and len(search.cells) == 14
  assert search.best_resolved_at() is None          # a local minimum at no spacing searched
  open_cells = search.best_unscored_neighbours()
  assert open_cells == [(best[0], 0.95), (best[0], 1.05)]
  assert not set(open_cells) & set(search.cells)
  # scoring what it names moves the best to (5.75, 1.05), whose own open neighbours are
  # then named in turn (the by-hand completion the log records)
  search.budget += len(open_cells)
  for cell in open_cells:
    search._score(*cell)
  assert search.best() == (5.75, 1.05) and search.best_resolved_at() is None
  assert search.best_unscored_neighbours() == [(5.0, 1.05), (6.5, 1.05), (5.75, 1.1)]


def test_a_best_cell_on_the_coarse_lattice_is_resolved_there_only():
  search = sweep.Search(bowl(1.7, 0.95)[0], budget=14, w_max=3.0)
  best = search.run([0, 0.5, 1], [0.85, 1.0, 1.15])
  assert best == (1.5, 1.0) and search.best_resolved_at() == (0.5, 0.15)
  # at the refined spacing three of its neighbours were left; (1.25, 1.0) had been scored
  assert search.best_unscored_neighbours() == [(1.75, 1.0), (1.5, 0.925), (1.5, 1.075)]
  assert (1.25, 1.0) in search.cells


def test_a_search_at_a_fixed_w_stays_there():
  """The paper's unguided protocol (w = 0): the bowl's minimum at w 1.7 must not pull the
  search off w = 0; t still walks to its best."""
  score, calls = bowl(1.7, 0.55)
  search = sweep.Search(score, budget=10, w_max=0.0, w_min=0.0)
  w, t = search.run([0.0], [0.85, 1.0, 1.15])
  assert w == 0.0 and {c[0] for c in calls} == {0.0}
  assert abs(t - 0.55) < 0.04 and search.converged()
  assert len(search.cells) == 10  # refined at half spacing until the budget was spent
  # w's neighbours lie outside the fixed w, so only t's count, at the finest spacing
  assert search.best_resolved_at() == (0.125, 0.0375) and search.best_unscored_neighbours() == []


def test_grids_outside_the_limits_are_refused_before_the_run_is_read(tmp_path):
  """G guided through its input was trained on w <= cfg_w_max = 2: a fixed w of 2.5, or a
  starting grid with no cell inside the limits, is one clear error; the workdir does not
  exist, so the error came before anything was restored."""
  config = parse_config('--config.reverse.enabled=True', '--config.objective.cfg_w_max=2')
  missing = tmp_path / 'no_run_here'
  with pytest.raises(ValueError, match=r'fix_w at w = 2.5: reverse takes w in \[0, 2\]'):
    sweep.sweep(config, missing, 'reverse', 5, ws=[2.5], ts=[1.0], fix_w=True)
  with pytest.raises(ValueError, match=r'no cell of the starting grid .* w <= 2\)'):
    sweep.sweep(config, missing, 'reverse', 5, ws=[2.5, 3.0], ts=[1.0])
  with pytest.raises(ValueError, match=r'fix_w at w = -1: exact takes w in \[0, inf\)'):
    sweep.sweep(config, missing, 'exact', 5, ws=[-1.0], ts=[1.0], fix_w=True)
  with pytest.raises(ValueError, match=r'no cell of the starting grid .*t > 0\)'):
    sweep.sweep(config, missing, 'exact', 5, ws=[0.5, 4.0], ts=[0.0])
  assert not missing.exists()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep')
  config = parse_config('--config.reverse.enabled=True', '--config.schedule.plan=two_stage',
                        '--config.schedule.forward_steps=4', '--config.schedule.reverse_steps=4',
                        '--config.sample_every=1000', '--config.eval_every=1000',
                        '--config.eval.num_samples=20', '--config.eval.batch=20',
                        '--config.eval.is_splits=2', '--config.objective.cfg_w_max=2')
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_a_cell_equals_mode_eval_at_that_cell_and_files_are_written(trained, tmp_path):
  config, workdir = trained
  result = sweep.sweep(config, workdir, 'reverse', budget=3, ws=[0.0, 1.0], ts=[1.0],
                       out=tmp_path, command='test')
  assert len(result['cells']) == 3 and result['w_max'] == 2.0
  cell = next(c for c in result['cells'] if (c['w'], c['t']) == (1.0, 1.0))
  evaluated = evaluate.run(_eval_config(config, 1.0, 1.0), workdir)
  want = evaluated['decoders']['reverse']
  for key in ('frechet_distance', 'precision', 'recall', 'class_accuracy'):
    assert cell[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
  saved = json.loads((tmp_path / 'sweep_reverse.json').read_text())
  assert saved['best'] == min(saved['cells'], key=lambda c: c['frechet_distance'])
  table = (tmp_path / 'sweep_reverse.md').read_text()
  assert '| w \\ t |' in table and 'Command: `test`' in table
  assert saved['best_resolved_at'] is None or len(saved['best_resolved_at']) == 2
  assert ('neighbours are all scored at spacing' in table) == (saved['best_resolved_at'] is not None)
  assert np.isfinite([c['frechet_distance'] for c in saved['cells']]).all()


def _eval_config(config, w, t):
  cell = sweep.cell_config(config, 'reverse', w, t)
  cell.eval.decoders = 'reverse'
  cell.eval.floor_samples = 0
  return cell


def test_bad_requests_are_clear_errors(trained):
  config, workdir = trained
  with pytest.raises(ValueError, match='budget must be at least one'):
    sweep.Search(lambda w, t: {}, budget=0)
  forward_only = parse_config()
  with pytest.raises(ValueError, match="--decoder='reverse'"):
    sweep.make_scorer(forward_only, workdir, 'reverse')
  with pytest.raises(ValueError, match='fix_w searches t at one w'):
    sweep.sweep(config, workdir, 'reverse', 4, ws=[0, 1], ts=[1.0], fix_w=True)


def test_the_command_scores_a_run_as_it_was_trained(trained, tmp_path):
  """configs/tiny.py trains F alone; the run here also has G. The command takes the run's own
  model (as --mode=eval does), so --decoder=reverse works with that file, where the file as
  it is would have no G (and a checkpoint 'written by a different model')."""
  _, workdir = trained
  python('-m', 'biflow_jax.tools.sweep', f'--config={TINY}', f'--workdir={workdir}',
         '--decoder=reverse', '--cells=1', '--w=1', '--t=1', f'--out={tmp_path}',
         '--config.eval.num_samples=20', '--config.eval.batch=20', '--config.eval.is_splits=2',
         timeout=600)
  saved = json.loads((tmp_path / 'sweep_reverse.json').read_text())
  assert [(c['w'], c['t']) for c in saved['cells']] == [(1.0, 1.0)]
  assert np.isfinite(saved['cells'][0]['frechet_distance'])


def _stored_result(search, ws, ts, decoder='exact', step=100):
  """A sweep JSON as `sweep.sweep` writes it, for a search already run."""
  return {'decoder': decoder, 'step': step, 'budget': search.budget, 'w_max': search.w_max,
          'fix_w': False, 'start_grid': {'w': ws, 't': ts},
          'cells': search.records()}


def test_the_audit_replays_a_stored_sweep_and_adds_later_cells(tmp_path):
  score = bowl(5.9, 1.04)[0]
  ws, ts = [2, 3.5, 5], [0.9, 1.0, 1.1]
  search = sweep.Search(score, budget=14)
  search.run(ws, ts)
  main = tmp_path / 'sweep_exact.json'
  main.write_text(json.dumps(_stored_result(search, ws, ts)))
  report = sweep_audit.audit([str(main)])
  assert report['best'] == search.best() and report['cells'] == 14
  # the replayed search holds what the live one held, so it writes the same cells
  assert sweep.replay(json.loads(main.read_text())).records() == search.records()
  assert report['best_resolved_at'] is None
  assert report['best_unscored_neighbours'] == search.best_unscored_neighbours()
  # the completion the audit asks for, as a later one-cell sweep each, makes it resolved
  extra, k = [], 0
  while report['best_unscored_neighbours'] and k < 10:
    for w, t in report['best_unscored_neighbours']:
      k += 1
      path = tmp_path / f'extra{k}.json'
      path.write_text(json.dumps({'decoder': 'exact', 'step': 100, 'cells': [
          dict(w=w, t=t, **score(w, t))]}))
      extra.append(str(path))
    report = sweep_audit.audit([str(main)] + extra)
  assert report['best_unscored_neighbours'] == [] and report['best_resolved_at'] == (0.75, 0.05)
  assert report['best'] == (5.75, 1.05) and report['cells'] == 14 + k


def test_the_audit_refuses_what_it_cannot_replay(tmp_path, capsys):
  ws, ts = [0, 0.5, 1], [0.85, 1.0, 1.15]
  search = sweep.Search(bowl(1.7, 0.95)[0], budget=14, w_max=3.0)
  search.run(ws, ts)
  result = _stored_result(search, ws, ts)
  tampered = dict(result, cells=result['cells'][:-1])   # a cell the search scored, dropped
  (tmp_path / 'tampered.json').write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match='not written by this search'):
    sweep_audit.audit([str(tmp_path / 'tampered.json')])
  (tmp_path / 'main.json').write_text(json.dumps(result))
  (tmp_path / 'g.json').write_text(json.dumps(dict(result, decoder='reverse')))
  with pytest.raises(ValueError, match='same run and decoder'):
    sweep_audit.audit([str(tmp_path / 'main.json'), str(tmp_path / 'g.json')])
  assert sweep_audit.main([str(tmp_path / 'missing.json')]) == 2
  assert 'missing.json' in capsys.readouterr().err
