"""The ablation tool: study definitions, a toy end-to-end `--study=all`, resume, bad input."""
import itertools
import json
import types
import zlib
from pathlib import Path

import jax
import pytest

from biflow_jax.modes import evaluate
from biflow_jax.objective import biflow
from biflow_jax.tools import ablate, ablations
from biflow_jax.training import train

from subprocess_util import python
from test_train import TINY, parse_config

COLUMNS = ('frechet_distance', 'class_accuracy', 'precision', 'recall', 'ms_per_image',
           'paper_fd', 'training_seconds', 'eval_seconds', 'note', 'label')

# A toy BiFlow: tiny F and G, a few steps each, a 20-sample evaluation without a floor row.
TOY = ('--config.reverse.enabled=True', '--config.reverse.width=16',
       '--config.reverse.num_heads=2', '--config.reverse.depth=3',
       '--config.schedule.plan=two_stage', '--config.schedule.forward_steps=3',
       '--config.schedule.reverse_steps=2', '--config.objective.cfg_w_max=1.0',
       '--config.sample.reverse_guidance=0.5', '--config.perceptual.feature_weight=1.0',
       '--config.sample.num=10', '--config.eval.num_samples=20', '--config.eval.batch=20',
       '--config.eval.floor_samples=0', '--config.eval_batches=1', '--config.log_every=1000')


def toy(*overrides):
  return parse_config(*TOY, *overrides)


# ------------------------------------------------------------------- pure definitions

def test_every_study_shares_one_base_and_all_trains_each_g_once():
  assert ablations.parse_studies('all') == ablations.STUDIES
  assert ablations.parse_studies('guidance, supervision') == ('supervision', 'guidance')
  assert ablations.forwards(ablations.STUDIES) == ('default', 'no_clip')
  assert len(ablations.trainings(ablations.STUDIES)) == 7
  assert len(ablations.evaluations(ablations.STUDIES)) == 10
  for study in ablations.STUDIES:
    assert 'base' in ablations.trainings([study])
  # Rows sharing an evaluation are scored the same way; distinct ones differ.
  seen = {}
  for r in ablations.ROWS:
    way = (r.training, r.decoder, tuple(sorted((k, repr(v)) for k, v in r.sample.items())))
    assert seen.setdefault(r.eval, way) == way, r
  assert len(set(seen.values())) == len(seen)


def test_denoise_score_and_none_train_the_same_g():
  """Why one G serves both rows: the reverse loss is the same for 'score' and 'none'."""
  keys = jax.random.split(jax.random.key(0), 6)
  trajectory = [jax.random.normal(k, (2, 4, 3)) for k in keys[:3]]
  out, clean = jax.random.normal(keys[3], (2, 4, 3)), jax.random.normal(keys[4], (2, 4, 3))
  projections = [jax.random.normal(k, (2, 4, 3)) for k in jax.random.split(keys[5], 2)]
  a = biflow.reverse_loss(out, projections, clean, trajectory, denoise='score')
  b = biflow.reverse_loss(out, projections, clean, trajectory, denoise='none')
  assert float(a[0]) == float(b[0])
  c = biflow.reverse_loss(out, projections, clean, trajectory, denoise='learned')
  assert float(c[0]) != float(a[0])


def test_ordering():
  rows = [dict(name='a', paper_fd=1.0, frechet_distance=5.0),
          dict(name='b', paper_fd=2.0, frechet_distance=6.0),
          dict(name='c', paper_fd=None, frechet_distance=1.0)]
  assert ablations.ordering(rows) == {'holds': True, 'broken': []}
  rows[1]['frechet_distance'] = 4.0
  result = ablations.ordering(rows)
  assert result['holds'] is False and result['broken'][0].startswith('a < b in the paper')
  assert ablations.ordering(rows[2:])['holds'] is None


def test_derived_configs():
  config = toy()
  f = ablations.forward_config(config, 'no_clip')
  assert f.model.clip is None and not f.reverse.enabled and f.schedule.plan == 'forward_only'
  g = ablations.reverse_config(config, 'hidden', '/runs/F')
  assert (g.schedule.plan, g.model.init_from, g.reverse.head_mode) == (
      'reverse_only', '/runs/F', 'shared')
  assert g.objective.cfg_w_max == 0 and g.perceptual.feature_weight == 0
  row = next(r for r in ablations.ROWS if r.name == 'cfg_2nfe')
  e = ablations.eval_config(config, row, '/runs/F')
  assert (e.sample.reverse_cfg, e.sample.reverse_guidance, e.eval.decoders) == (
      'two_pass', 0.5, 'reverse')


def test_guided_base_keeps_the_configs_cfg_and_perceptual_terms():
  """--base=guided: each row still changes one thing, from the config's own G (CFG on,
  the feature term on), and is sampled at the config's guided cells; the paper's base is
  unchanged."""
  config = toy()
  for training in ('base', 'naive', 'hidden', 'denoise_at_sampling', 'no_norm_control'):
    paper = ablations.reverse_config(config, training, '/runs/F')
    guided = ablations.reverse_config(config, training, '/runs/F', 'guided')
    assert (paper.objective.cfg_w_max, paper.perceptual.feature_weight) == (0.0, 0.0)
    assert (guided.objective.cfg_w_max, guided.perceptual.feature_weight) == (1.0, 1.0)
    for field in ('objective.reverse_mode', 'reverse.head_mode', 'objective.denoise',
                  'objective.norm_control', 'model.clip', 'schedule.plan'):
      assert ablations._get(paper, field) == ablations._get(guided, field), (training, field)
  by_name = {r.name: r for r in ablations.ROWS}
  g = ablations.eval_config(config, by_name['align'], '/runs/F', 'guided')
  assert (g.sample.reverse_guidance, g.sample.reverse_cfg, g.eval.decoders) == (
      0.5, 'input', 'reverse')
  exact = ablations.eval_config(config, by_name['exact_inverse'], '/runs/F', 'guided')
  assert (exact.sample.guidance, exact.sample.denoise, exact.eval.decoders) == (
      config.sample.guidance, 'score', 'exact')
  assert ablations.eval_config(config, by_name['align'], '/runs/F').sample.reverse_guidance == 0


# ------------------------------------------------------------------------- bad input

@pytest.fixture
def no_training(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('trained or evaluated after bad input')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(evaluate, 'run', fail)


@pytest.mark.parametrize('overrides, study, match', [
    ((), 'everything', 'unknown study.*supervision, denoising, norm_control, distance, guidance'),
    (('--config.reverse.enabled=False',), 'all', 'reverse.enabled=True'),
    (('--config.model.num_classes=0',), 'guidance', 'num_classes > 0'),
    (('--config.objective.label_drop_prob=0.0',), 'guidance', 'label_drop_prob > 0'),
    (('--config.schedule.plan=progressive', '--config.schedule.joint_steps=2'), 'all',
     'plan=two_stage'),
    (('--config.schedule.reverse_steps=0',), 'denoising', 'reverse_steps must be > 0'),
    (('--config.perceptual.feature_weight=0.0',), 'distance', 'feature_weight=1.0'),
    (('--config.sample.reverse_guidance=2.0',), 'guidance', 'cfg_w_max'),
])
def test_bad_input_fails_before_anything_trains(no_training, tmp_path, overrides, study, match):
  with pytest.raises(ValueError, match=match):
    ablate.run(toy(*overrides), study, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('overrides, study, base, match', [
    ((), 'supervision', 'nope', 'use one of paper, guided'),
    ((), 'supervision,guidance', 'guided', 'not guidance.*--base=paper'),
    ((), 'all', 'guided', 'not distance, guidance'),
    (('--config.objective.cfg_w_max=0.0',), 'denoising', 'guided', 'cfg_w_max > 0'),
    ((), 'objective', 'guided', "not --study=objective"),
])
def test_bad_base_fails_before_anything_trains(no_training, tmp_path, overrides, study, base,
                                               match):
  with pytest.raises(ValueError, match=match):
    ablate.run(toy(*overrides), study, tmp_path / 'run', base=base)
  assert not (tmp_path / 'run').exists()


def test_cli_names_the_valid_studies(tmp_path):
  proc = python('-m', 'biflow_jax.tools.ablate', f'--config={TINY}', '--study=nope',
                f'--workdir={tmp_path}', expect=2)
  assert 'FATAL' in proc.stderr and 'supervision, denoising' in proc.stderr


# -------------------------------------------------- orchestration, without training

class FakeJobs:
  """Stands in for training and evaluation (seconds instead of minutes): records each
  call and answers with metrics that depend on what was asked, so shared jobs show."""

  def __init__(self):
    self.trained, self.evaluated = [], []

  def train(self, config, workdir):
    self.trained.append((str(workdir), config))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    s = config.schedule
    return types.SimpleNamespace(step=s.forward_steps + s.joint_steps + s.reverse_steps)

  def evaluate(self, config, workdir):
    self.evaluated.append((str(workdir), config))
    s = config.sample
    way = f'{workdir.name}/{config.eval.decoders}/{s.denoise}/{s.reverse_cfg}/{s.reverse_guidance}'
    fd = 1.0 + zlib.crc32(way.encode()) % 1000
    entry = dict(frechet_distance=fd, class_accuracy=0.5, precision=0.4, recall=0.3,
                 sampling_seconds=0.2, guidance=float(s.reverse_guidance), temperature=1.0)
    return {'step': 2, 'num_samples': int(config.eval.num_samples),
            'decoders': {config.eval.decoders: entry}}


@pytest.fixture
def fake(monkeypatch):
  jobs = FakeJobs()
  monkeypatch.setattr(train, 'train_and_evaluate', jobs.train)
  monkeypatch.setattr(evaluate, 'run', jobs.evaluate)
  return jobs


def test_all_studies_run_each_job_once_and_resume(fake, tmp_path):
  workdir = tmp_path / 'ablations'
  lines = []
  report = ablate.run(toy(), 'all', workdir, 'the command', log=lines.append)
  assert len(fake.trained) == 2 + 7 and len(fake.evaluated) == 10
  assert len(report['jobs_run']) == 19
  assert 'ETA >= 0h00m00s (F, G, eval speed not measured yet)' in lines[1]
  assert any(line.endswith('ETA 0h00m00s)') for line in lines)  # every kind timed
  # Every G starts from its F's run with the same steps and seed.
  runs = {Path(w).name: c for w, c in fake.trained}
  for name, c in runs.items():
    if name in ablations.TRAININGS:
      f = ablations.TRAININGS[name][0]
      assert c.schedule.plan == 'reverse_only' and c.model.init_from == str(
          workdir / 'forward' / f)
      assert (c.schedule.reverse_steps, c.seed, c.data.seed) == (2, 0, 0)
  assert runs['no_clip'].model.clip is None and runs['no_norm_control'].model.clip is None
  assert runs['cfg'].objective.cfg_w_max == 1.0 and runs['base'].objective.cfg_w_max == 0.0
  assert runs['perceptual'].perceptual.feature_weight == 1.0
  two_pass = [c for w, c in fake.evaluated if c.sample.reverse_cfg == 'two_pass']
  assert len(two_pass) == 1 and Path(fake.evaluated[0][0]).name == 'base'

  on_disk = json.loads((workdir / 'ablations.json').read_text())
  md = (workdir / 'ablations.md').read_text()
  assert on_disk['command'] == 'the command' and '`the command`' in md
  for study in ablations.STUDIES:
    table = on_disk['studies'][study]
    assert [r['name'] for r in table['rows']] == [r.name for r in ablations.rows([study])]
    for r in table['rows']:
      assert all(column in r for column in COLUMNS), (study, r)
      assert r['ms_per_image'] == pytest.approx(1e3 * 0.2 / 20)
      assert f"| {r['label']} |" in md
    assert table['paper_ordering']['holds'] in (True, False)
    assert f'## {study}' in md
  # The base G's row is the same evaluation in every study; score and none share a G.
  bases = {r['frechet_distance'] for t in on_disk['studies'].values() for r in t['rows']
           if r['evaluation'] == 'base'}
  assert len(bases) == 1
  rows = {r['name']: r for r in on_disk['studies']['denoising']['rows']}
  assert rows['score']['training'] == rows['none']['training']
  assert rows['score']['frechet_distance'] != rows['none']['frechet_distance']

  # A rerun redoes nothing; a lost evaluation record redoes that evaluation alone.
  stamp = (workdir / 'reverse' / 'base' / ablate.DONE).stat().st_mtime_ns
  again = ablate.run(toy(), 'all', workdir, 'the command', log=lines.append)
  assert again['jobs_run'] == [] and len(fake.trained) == 9 and len(fake.evaluated) == 10
  assert again['studies'] == on_disk['studies']
  assert (workdir / 'reverse' / 'base' / ablate.DONE).stat().st_mtime_ns == stamp
  (workdir / 'evals' / 'cfg_2nfe.json').unlink()
  assert ablate.run(toy(), 'all', workdir)['jobs_run'] == ['eval:cfg_2nfe']
  # Finished runs of another config are not taken for this one's.
  with pytest.raises(ValueError, match='another config'):
    ablate.run(toy('--config.schedule.reverse_steps=3'), 'all', workdir)


def test_given_forward_is_not_trained(fake, tmp_path):
  report = ablate.run(toy('--config.model.init_from=/runs/F'), 'denoising', tmp_path)
  assert [Path(w).name for w, _ in fake.trained] == ['base', 'denoise_at_sampling']
  assert all(c.model.init_from == '/runs/F' for _, c in fake.trained)
  assert report['given_forward'] == '/runs/F'


def test_guided_base_trains_guided_gs_and_says_so(fake, tmp_path):
  report = ablate.run(toy('--config.model.init_from=/runs/F'), 'supervision,norm_control',
                      tmp_path, 'cmd', base='guided')
  assert [Path(w).name for w, _ in fake.trained] == ['no_clip', 'base', 'naive', 'hidden',
                                                     'no_norm_control']
  assert all(c.objective.cfg_w_max == 1.0 and c.perceptual.feature_weight == 1.0
             for w, c in fake.trained if Path(w).name != 'no_clip')
  assert all(c.sample.reverse_guidance == 0.5 for _, c in fake.evaluated)
  assert report['base'] == 'guided' and list(report['studies']) == ['supervision',
                                                                    'norm_control']
  assert 'Base (--base=guided)' in (tmp_path / 'ablations.md').read_text()
  # A paper-base run of the same studies in that workdir is another config.
  with pytest.raises(ValueError, match='another config'):
    ablate.run(toy('--config.model.init_from=/runs/F'), 'supervision', tmp_path)


class FakeSweeps:
  """Stands in for tools/sweep: records each search and answers a best cell that depends on
  the evaluation it follows."""

  def __init__(self):
    self.calls = []

  def sweep(self, config, workdir, decoder, budget, ws, ts, out, command='', fix_w=False):
    self.calls.append(dict(workdir=str(workdir), decoder=decoder, budget=budget, ws=ws, ts=ts,
                           out=str(out), fix_w=fix_w, config=config))
    fd = 0.5 + zlib.crc32(f'{workdir}/{out}'.encode()) % 100
    best = dict(w=ws[-1], t=ts[0], frechet_distance=fd, class_accuracy=0.6, precision=0.5,
                recall=0.7)
    return {'best': best, 'converged': True, 'stopped': 'converged', 'step': 2,
            'cells': [best] * budget, 'start_grid': {'w': ws, 't': ts}}


@pytest.fixture
def fake_sweeps(monkeypatch):
  sweeps = FakeSweeps()
  monkeypatch.setattr(ablate.sweep, 'sweep', sweeps.sweep)
  return sweeps


def test_start_grids_centre_on_the_rows_cell():
  config = toy('--config.sample.guidance=0.75', '--config.sample.temperature=0.9')
  by_name = {r.name: r for r in ablations.ROWS}
  t = float(config.sample.temperature)  # G's temperature follows F's (reverse_temperature -1)
  g_ts = [round(t - 0.15, 6), t, round(t + 0.15, 6)]
  unguided = ablations.eval_config(config, by_name['align'], '/runs/F')
  assert ablations.sweep_grid(unguided, 'reverse') == ([0.0], g_ts, True)
  guided = ablations.eval_config(config, by_name['align'], '/runs/F', 'guided')
  assert ablations.sweep_grid(guided, 'reverse') == ([0.0, 0.5, 1.0], g_ts, False)  # w 0.5
  exact = ablations.eval_config(config, by_name['exact_inverse'], '/runs/F', 'guided')
  w = float(config.sample.guidance)
  ws, ts, fix_w = ablations.sweep_grid(exact, 'exact')
  assert not fix_w and ws == [round(x, 6) for x in (w - 0.25, w, w + 0.25) if x >= 0]
  assert ts == [round(t - 0.075, 6), t, round(t + 0.075, 6)]


def test_each_evaluation_is_swept_once_and_the_tables_show_its_best_cell(
    fake, fake_sweeps, tmp_path):
  workdir = tmp_path / 'ablations'
  lines = []
  config = toy('--config.sample.guidance=0.75')  # F's exact inverse guided too
  report = ablate.run(config, 'supervision,denoising', workdir, log=lines.append, base='guided',
                      sweep_cells=9)
  evaluations = ablations.evaluations(('supervision', 'denoising'))
  assert len(fake_sweeps.calls) == len(evaluations) == len(fake.evaluated)
  assert '6 evaluations, 6 sweeps' in lines[0]
  # Each sweep right after its evaluation, on the same run and config, a 3 x 3 grid.
  order = [line.split('] ')[1].split(' ->')[0] for line in lines if line.startswith('ablate [')]
  for i, job in enumerate(order):
    if job.startswith('eval '):
      assert order[i + 1] == 'sweep ' + job.split()[1]
  for call, (evaluated_run, evaluated_config) in zip(fake_sweeps.calls, fake.evaluated):
    assert call['workdir'] == evaluated_run
    assert call['config'].to_dict() == evaluated_config.to_dict()
    assert call['budget'] == 9 and len(call['ws']) * len(call['ts']) == 9
    assert not call['fix_w']
  for study in ('supervision', 'denoising'):
    for r in report['studies'][study]['rows']:
      record = json.loads((workdir / 'sweeps' / f"{r['evaluation']}.json").read_text())
      assert r['best'] == ablations.best_cell(record) and r['best']['cells'] == 9
      assert record['result'] == str(workdir / 'sweeps' / r['evaluation'] /
                                     f"sweep_{r['decoder']}.json")
    # The second verdict ranks the best cells' FD: every pair the paper ranks a < b.
    ranked = [(r['paper_fd'], r['best']['frechet_distance'])
              for r in report['studies'][study]['rows'] if r['paper_fd'] is not None]
    holds = all(fa < fb for (pa, fa), (pb, fb) in itertools.permutations(ranked, 2) if pa < pb)
    assert report['studies'][study]['paper_ordering_best']['holds'] is holds
  md = (workdir / 'ablations.md').read_text()
  assert '| best of the sweep |' in md and '(9, converged) |' in md
  assert md.count("At each row's best cell of the sweep: ") == 2
  # A rerun sweeps nothing again; another cell count is another config's sweep.
  again = ablate.run(config, 'supervision,denoising', workdir, base='guided', sweep_cells=9,
                     log=lambda _: None)
  assert again['jobs_run'] == [] and len(fake_sweeps.calls) == len(evaluations)
  with pytest.raises(ValueError, match='records a finished sweep'):
    ablate.run(config, 'supervision,denoising', workdir, base='guided', sweep_cells=10)


def test_an_unguided_row_is_swept_at_w_0(fake, fake_sweeps, tmp_path):
  report = ablate.run(toy(), 'norm_control', tmp_path / 'a', log=lambda _: None, sweep_cells=9)
  assert {c['fix_w'] for c in fake_sweeps.calls} == {True}
  assert {tuple(c['ws']) for c in fake_sweeps.calls} == {(0.0,)}
  assert all(r['best']['w'] == 0.0 for r in report['studies']['norm_control']['rows'])


@pytest.mark.parametrize('study, base, cells, match', [
    ('denoising', 'guided', 4, 'at least 9, the starting grid'),
    ('objective', 'paper', 8, 'at least 9, the starting grid'),
    ('denoising', 'paper', -1, 'give 0 .no sweeps.'),
])
def test_too_few_sweep_cells_fail_before_anything_trains(no_training, tmp_path, study, base,
                                                         cells, match):
  with pytest.raises(ValueError, match=match):
    ablate.run(toy(), study, tmp_path / 'run', base=base, sweep_cells=cells)
  assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_all_studies_end_to_end_then_a_rerun_redoes_nothing(tmp_path, monkeypatch):
  """The real thing on the toy config: 2 F, 7 G, 10 evaluations (minutes on 2 cores)."""
  workdir = tmp_path / 'ablations'
  lines = []
  report = ablate.run(toy(), 'all', workdir, 'test', log=lines.append)
  assert len(report['jobs_run']) == 2 + 7 + 10
  assert any('ETA 0h' in line for line in lines)  # measured once every kind had run
  on_disk = json.loads((workdir / 'ablations.json').read_text())
  md = (workdir / 'ablations.md').read_text()
  for study in ablations.STUDIES:
    table = on_disk['studies'][study]
    assert [r['name'] for r in table['rows']] == [r.name for r in ablations.rows([study])]
    for r in table['rows']:
      for column in COLUMNS:
        assert column in r, (study, r['name'], column)
      assert r['frechet_distance'] >= 0 and 0 <= r['class_accuracy'] <= 1
      assert r['ms_per_image'] > 0 and r['eval_seconds'] > 0
      assert f"| {r['label']} |" in md
    assert table['paper_ordering']['holds'] in (True, False)
    assert f'## {study}' in md
  assert "Paper's ordering of FD holds here" in md
  # Same G, scored twice; the exact inverse is F's, not a G.
  rows = {r['name']: r for r in on_disk['studies']['denoising']['rows']}
  assert rows['score']['training'] == rows['none']['training'] == 'denoise_at_sampling'
  assert rows['score']['frechet_distance'] != rows['none']['frechet_distance']
  assert on_disk['studies']['supervision']['rows'][0]['decoder'] == 'exact'

  # A rerun trains and evaluates nothing, and writes the same tables.
  marker = workdir / 'reverse' / 'base' / ablate.DONE
  stamp = marker.stat().st_mtime_ns
  def fail(*args, **kwargs):
    raise AssertionError('a finished job was redone')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  monkeypatch.setattr(evaluate, 'run', fail)
  again = ablate.run(toy(), 'all', workdir, 'test', log=lines.append)
  assert again['jobs_run'] == [] and marker.stat().st_mtime_ns == stamp
  assert again['studies'] == on_disk['studies']
  # A changed config is not taken for the finished runs.
  with pytest.raises(ValueError, match='another config'):
    ablate.run(toy('--config.schedule.reverse_steps=3'), 'all', workdir)
