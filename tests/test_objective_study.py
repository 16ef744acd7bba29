"""The joint-objective study (`tools/ablate --study=objective`): rows at equal wall time,
the jobs they need, resume, bad input; the step-cost measurement (slow)."""
import json
import math
from pathlib import Path

import pytest
from etils import epath

from biflow_jax.tools import ablate, ablations, objective_study as study

from test_ablate import fake, fake_sweeps, toy  # noqa: F401  (fixtures)

# Step costs relative to an F step, as measured at the MNIST default's size
# (docs/experiments/objective.md); any positive values would do for the pure tests.
COSTS = {'F': 1.0, 'G align': 1.64, 'G inverse matching': 1.81, 'G align + prior rows': 1.95,
         'joint inverse matching': 4.30, 'joint align + prior rows': 2.95}


def mnist_sized():
  return toy('--config.schedule.forward_steps=1800', '--config.schedule.reverse_steps=1000')


def test_every_row_fills_the_same_budget():
  config = mnist_sized()
  b = study.budget(config, COSTS)
  assert b == pytest.approx(1800 + 1000 * 1.64)
  for arm in study.ARMS:
    steps = study.schedule(arm, config, COSTS)
    used = (steps['forward_steps'] + steps['joint_steps'] * COSTS.get(arm.joint_kind, 0)
            + steps['reverse_steps'] * COSTS.get(arm.reverse_kind, 0))
    # Rounding each phase to whole steps moves the total by at most half a step per phase.
    assert abs(used - b) <= 0.5 * (1 + COSTS['joint inverse matching'] + COSTS['G align + prior rows'])
  by_name = {a.name: study.schedule(a, config, COSTS) for a in study.ARMS}
  assert by_name['two_stage_align'] == {'forward_steps': 1800, 'joint_steps': 0,
                                        'reverse_steps': 1000}  # the config's own run
  assert by_name['forward_only']['forward_steps'] == 3440
  assert by_name['two_stage_im']['reverse_steps'] == round(1640 / 1.81)
  assert by_name['joint_im_lambda_1']['forward_steps'] == 900
  lambdas = [a for a in study.ARMS if a.name.startswith('joint_im_lambda')]
  assert [a.overrides['objective.reverse_weight'] for a in lambdas] == [0.5, 1.0, 2.0]
  assert len({json.dumps(by_name[a.name]) for a in lambdas}) == 1  # lambda costs nothing


def test_rows_change_only_what_they_say(tmp_path):
  config = mnist_sized()
  jobs = {(j.kind, j.name): j for j in study.plan(config, epath.Path(tmp_path), COSTS)}
  f_default = jobs[('F', 'default')].config
  assert f_default.schedule.plan == 'forward_only' and not f_default.reverse.enabled
  g = jobs[('G', 'two_stage_im')].config
  assert g.schedule.plan == 'reverse_only' and g.model.init_from == str(tmp_path / 'forward' /
                                                                         'default')
  assert g.objective.reverse_target == 'inverse_matching'
  assert jobs[('G', 'two_stage_align')].config.objective.reverse_target == 'trajectory'
  weighted = jobs[('run', 'joint_im_weighted')].config
  assert weighted.schedule.plan == 'progressive' and weighted.objective.token_weighting
  assert weighted.objective.reverse_weight == 1.0
  assert jobs[('run', 'joint_align_prior')].config.objective.prior_fraction == 0.25
  for (kind, name), job in jobs.items():
    c = job.config
    assert (c.seed, c.data.seed, c.reverse.width, c.optim.reverse.lr) == (
        config.seed, config.data.seed, config.reverse.width, config.optim.reverse.lr)
    if kind == 'eval':
      w = 0.0 if name.endswith('unguided') else config.sample.reverse_guidance
      assert c.sample.reverse_guidance == w
      assert c.eval.decoders == ('exact' if name.startswith('forward_only') else 'reverse')
  assert jobs[('eval', 'forward_only.guided')].config.sample.denoise == 'score'


@pytest.mark.parametrize('overrides, match', [
    (('--config.schedule.plan=progressive', '--config.schedule.joint_steps=2'),
     "takes its budget from the config's two-stage run"),
    (('--config.model.init_from=/runs/F',), 'unset --config.model.init_from'),
    (('--config.objective.reverse_target=inverse_matching',), "reverse_target='trajectory'"),
    (('--config.schedule.forward_steps=1',), 'forward_steps >= 2'),
])
def test_bad_configs_fail_before_anything_is_measured(tmp_path, monkeypatch, overrides, match):
  monkeypatch.setattr(study, 'measure_costs', lambda *a, **k: pytest.fail('measured'))
  with pytest.raises(ValueError, match=match):
    ablate.prepare(toy(*overrides), 'objective', tmp_path)


def test_objective_runs_alone():
  assert ablations.parse_studies('objective') == ('objective',)
  with pytest.raises(ValueError, match="'objective' runs alone"):
    ablations.parse_studies('objective,denoising')
  assert 'objective' not in ablations.parse_studies('all')


def test_a_budget_too_small_for_a_phase_is_named():
  config = toy('--config.schedule.forward_steps=2', '--config.schedule.reverse_steps=1')
  costs = dict(COSTS, **{'joint inverse matching': 40.0})
  arm = next(a for a in study.ARMS if a.name == 'joint_im_lambda_1')
  with pytest.raises(ValueError, match="'joint_im_lambda_1'.*joint_steps at 0"):
    study.schedule(arm, config, costs)


def test_the_study_runs_each_job_once_resumes_and_keeps_its_costs(fake, tmp_path, monkeypatch):
  measured = []
  def measure(config, kinds=tuple(COSTS), **kwargs):
    measured.append(config)
    return {'seconds': {k: COSTS[k] / 10 for k in kinds}, 'ratio': {k: COSTS[k] for k in kinds}}
  monkeypatch.setattr(study, 'measure_costs', measure)
  workdir = tmp_path / 'objective'
  config = toy()
  report = ablate.run(config, 'objective', workdir, 'the command', log=lambda _: None)
  arms = len(study.ARMS)
  # At F's initialisation, then inverse matching's kinds again on the trained shared F.
  assert len(measured) == 2 and len(fake.trained) == 1 + arms
  assert len(fake.evaluated) == 2 * arms
  rows = report['studies']['objective']['rows']
  assert [r['name'] for r in rows] == list(study.ARM_NAMES)
  for r in rows:
    assert r['unguided']['guidance'] == 0.0 and r['guided']['guidance'] == pytest.approx(0.5)
    assert math.isfinite(r['unguided']['frechet_distance'])
    assert r['budget_used'] == pytest.approx(report['budget_f_steps'], abs=4)
  on_disk = json.loads((workdir / 'ablations.json').read_text())
  md = (workdir / 'ablations.md').read_text()
  assert on_disk['step_cost_ratios'] == COSTS and '`the command`' in md
  for arm in study.ARMS:
    assert f'| {arm.label} |' in md
  # A rerun measures and redoes nothing; another config's costs are not reused.
  again = ablate.run(config, 'objective', workdir, 'the command', log=lambda _: None)
  assert again['jobs_run'] == [] and len(measured) == 2 and len(fake.trained) == 1 + arms
  with pytest.raises(ValueError, match='step costs measured for another config'):
    ablate.prepare(toy('--config.reverse.width=32'), 'objective', workdir)
  # Step counts alone do not change what a step costs.
  assert study.costs_key(toy('--config.schedule.reverse_steps=7')) == study.costs_key(config)


def test_inverse_matching_is_costed_on_the_trained_shared_f(fake, tmp_path, monkeypatch):
  """A G IM step's fixed-point target takes a sweep or two on an untrained F and many on a
  trained one: its rows are planned only after the shared F exists, by costs measured on it."""
  calls = []
  def measure(config, kinds=tuple(COSTS), forward_run='', **kwargs):
    calls.append((tuple(kinds), forward_run))
    ratio = {k: COSTS[k] * (2.0 if forward_run and k != 'F' else 1.0) for k in kinds}
    return {'seconds': {k: v / 10 for k, v in ratio.items()}, 'ratio': ratio}
  monkeypatch.setattr(study, 'measure_costs', measure)
  workdir, config = tmp_path / 'objective', mnist_sized()
  lines = []
  report = ablate.run(config, 'objective', workdir, log=lines.append, rows='joint_im_lambda_1')
  forward = str(study.shared_forward(workdir))
  assert calls == [(tuple(COSTS), ''), (('F',) + study.TRAINED_F_KINDS, forward)]
  assert [Path(w).name for w, _ in fake.trained] == ['default', 'joint_im_lambda_1']
  trained = {k: 2.0 * COSTS[k] for k in study.TRAINED_F_KINDS}
  costs = {**COSTS, **trained}
  assert report['step_cost_ratios'] == costs
  steps = study.schedule(study.ARMS[study.ARM_NAMES.index('joint_im_lambda_1')], config, costs)
  run_config = dict(fake.trained)[str(workdir / 'runs' / 'joint_im_lambda_1')]
  assert (run_config.schedule.joint_steps, run_config.schedule.reverse_steps) == (
      steps['joint_steps'], steps['reverse_steps'])
  record = json.loads((workdir / study.COSTS_FILE).read_text())
  assert record['trained_forward']['run'] == forward
  # A row without inverse matching needs no trained costs, nor the shared F.
  calls.clear()
  other = tmp_path / 'other'
  ablate.run(config, 'objective', other, log=lines.append, rows='joint_align_prior')
  assert calls == [(tuple(COSTS), '')] and not study.shared_forward(other).exists()
  assert not study.awaits_trained_costs(other, ('joint_align_prior',))
  assert study.awaits_trained_costs(other, ('two_stage_im',))


def test_a_second_seed_copies_the_first_seeds_costs_and_runs_its_step_counts(
    fake, tmp_path, monkeypatch):
  """--costs_from: a seed replicate runs the first seed's step counts, measures nothing, and
  needs no shared F for a row costed on the first seed's trained F."""
  calls = []
  def measure(config, kinds=tuple(COSTS), forward_run='', **kwargs):
    calls.append(forward_run)
    ratio = {k: COSTS[k] * (2.0 if forward_run and k != 'F' else 1.0) for k in kinds}
    return {'seconds': {k: v / 10 for k, v in ratio.items()}, 'ratio': ratio}
  monkeypatch.setattr(study, 'measure_costs', measure)
  seed0, seed1 = tmp_path / 'seed0', tmp_path / 'seed1'
  row = 'joint_im_lambda_1'
  ablate.run(mnist_sized(), 'objective', seed0, log=lambda _: None, rows=row)
  assert len(calls) == 2
  first = dict(fake.trained)[str(seed0 / 'runs' / row)]
  config1 = toy('--config.schedule.forward_steps=1800', '--config.schedule.reverse_steps=1000',
                '--config.seed=1')
  lines = []
  report = ablate.run(config1, 'objective', seed1, log=lines.append, rows=row,
                      costs_from=str(seed0))
  assert len(calls) == 2 and any('copied from' in line for line in lines)
  assert report['jobs_run'] == [f'run:{row}', f'eval:{row}.unguided', f'eval:{row}.guided']
  assert not study.shared_forward(seed1).exists()
  second = dict(fake.trained)[str(seed1 / 'runs' / row)]
  assert second.seed == 1 and first.seed == 0
  steps = lambda c: (c.schedule.forward_steps, c.schedule.joint_steps, c.schedule.reverse_steps)
  assert steps(second) == steps(first)
  record = json.loads((seed1 / study.COSTS_FILE).read_text())
  assert record['copied_from'] == str(seed0 / study.COSTS_FILE)
  assert report['step_cost_ratios'] == study.recorded_costs(seed0)
  table = (seed1 / 'ablations.md').read_text()
  assert f'step costs copied from {seed0 / study.COSTS_FILE}' in table
  assert 'step costs measured here' in (seed0 / 'ablations.md').read_text()
  # A record written before the seed left the key (it kept 'seed': 0) still matches.
  old = json.loads((seed0 / study.COSTS_FILE).read_text())
  old['key']['seed'] = 0
  (seed0 / study.COSTS_FILE).write_text(json.dumps(old))
  assert study.step_costs(config1, seed0) == study.recorded_costs(seed0)


@pytest.mark.parametrize('study_, overrides, source, match', [
    ('objective', (), 'empty', 'no step_costs.json there'),
    ('objective', ('--config.reverse.width=32',), 'measured', 'another config'),
    ('denoising', (), 'measured', 'applies to --study=objective only'),
])
def test_bad_costs_from_is_named_before_anything_is_measured(
    tmp_path, monkeypatch, study_, overrides, source, match):
  measured = tmp_path / 'measured'
  monkeypatch.setattr(study, 'measure_costs', lambda config, kinds=tuple(COSTS), **kwargs: {
      'seconds': {k: COSTS[k] / 10 for k in kinds}, 'ratio': {k: COSTS[k] for k in kinds}})
  study.step_costs(toy(), measured, log=lambda _: None)
  monkeypatch.setattr(study, 'measure_costs', lambda *a, **k: pytest.fail('measured'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=match):
    ablate.prepare(toy(*overrides), study_, tmp_path / 'new', costs_from=str(tmp_path / source))
  assert not (tmp_path / 'new' / study.COSTS_FILE).exists()


def test_rows_run_by_parts_in_the_order_given_and_the_table_grows(fake, tmp_path, monkeypatch):
  monkeypatch.setattr(study, 'measure_costs', lambda config, kinds=tuple(COSTS), **kwargs: {
      'seconds': {k: COSTS[k] / 10 for k in kinds}, 'ratio': {k: COSTS[k] for k in kinds}})
  workdir, config = tmp_path / 'objective', toy()
  lines = []
  first = ablate.run(config, 'objective', workdir, log=lines.append,
                     rows='joint_im_lambda_1,two_stage_im')
  # The shared F first (a two-stage row needs it and IM is costed on it), then the rows in
  # the order given.
  assert [line.split('] ')[1].split(' ->')[0] for line in lines if line.startswith(
      'ablate [')] == ['F default', 'run joint_im_lambda_1', 'eval joint_im_lambda_1.unguided',
                       'eval joint_im_lambda_1.guided', 'G two_stage_im',
                       'eval two_stage_im.unguided', 'eval two_stage_im.guided']
  assert first['jobs_run'] == ['run:joint_im_lambda_1', 'eval:joint_im_lambda_1.unguided',
                               'eval:joint_im_lambda_1.guided', 'G:two_stage_im',
                               'eval:two_stage_im.unguided', 'eval:two_stage_im.guided']
  table = first['studies']['objective']
  assert [r['name'] for r in table['rows']] == ['two_stage_im', 'joint_im_lambda_1']
  assert set(table['rows_not_run']) == set(study.ARM_NAMES) - {'two_stage_im',
                                                               'joint_im_lambda_1'}
  assert 'Rows not run yet' in (workdir / 'ablations.md').read_text()
  # A progressive row alone needs no shared F; the rows already finished stay in the table.
  second = ablate.run(config, 'objective', workdir, log=lambda _: None, rows='joint_im_lambda_2')
  assert second['jobs_run'] == ['run:joint_im_lambda_2', 'eval:joint_im_lambda_2.unguided',
                                'eval:joint_im_lambda_2.guided']
  assert len(second['studies']['objective']['rows']) == 3
  rest = ablate.run(config, 'objective', workdir, log=lambda _: None)
  assert rest['studies']['objective']['rows_not_run'] == []
  assert len(fake.trained) == 1 + len(study.ARMS)  # nothing trained twice


def test_each_scoring_is_swept_and_the_table_shows_both_best_cells(fake, fake_sweeps, tmp_path,
                                                                    monkeypatch):
  monkeypatch.setattr(study, 'measure_costs', lambda config, kinds=tuple(COSTS), **kwargs: {
      'seconds': {k: COSTS[k] / 10 for k in kinds}, 'ratio': {k: COSTS[k] for k in kinds}})
  workdir = tmp_path / 'objective'
  report = ablate.run(toy(), 'objective', workdir, log=lambda _: None, rows='joint_align_prior',
                      sweep_cells=9)
  assert report['jobs_run'][1:] == ['eval:joint_align_prior.unguided',
                                    'sweep:joint_align_prior.unguided',
                                    'eval:joint_align_prior.guided',
                                    'sweep:joint_align_prior.guided']
  unguided, guided = fake_sweeps.calls
  assert unguided['fix_w'] and unguided['ws'] == [0.0] and not guided['fix_w']
  assert guided['ws'] == [0.0, 0.5, 1.0]  # around the config's w 0.5 (cfg_w_max 1)
  row = report['studies']['objective']['rows'][0]
  assert row['unguided']['best']['w'] == 0.0 and row['guided']['best']['cells'] == 9
  md = (workdir / 'ablations.md').read_text()
  assert '| unguided, best of the sweep | guided, best of the sweep |' in md
  assert md.count('(9, converged) |') == 2


@pytest.mark.parametrize('rows, match', [('two_stage_align,nope', 'unknown row.*nope'),
                                         ('forward_only,forward_only', 'names a row twice'),
                                         (',', 'none given')])
def test_bad_rows_are_named_before_anything_is_measured(tmp_path, monkeypatch, rows, match):
  monkeypatch.setattr(study, 'measure_costs', lambda *a, **k: pytest.fail('measured'))
  with pytest.raises(ValueError, match=match):
    ablate.prepare(toy(), 'objective', tmp_path, rows=rows)
  with pytest.raises(ValueError, match='applies to --study=objective only'):
    ablate.prepare(toy(), 'distance', tmp_path, rows='forward_only')


@pytest.mark.slow  # six train steps compiled on the toy config (~2 min on 2 cores)
def test_measured_costs_are_positive_and_a_joint_step_costs_more_than_an_f_step():
  result = study.measure_costs(toy(), rounds=2, steps=2, log=lambda _: None)
  assert set(result['ratio']) == set(study.COST_KINDS) and result['ratio']['F'] == 1.0
  assert all(math.isfinite(v) and v > 0 for v in result['seconds'].values())
  # A joint inverse-matching step is an F step plus a fixed-point inverse and G's step.
  assert result['ratio']['joint inverse matching'] > 1.0
