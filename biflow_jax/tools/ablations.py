"""The paper's ablations (docs/method.md §4) as data: studies, rows, the runs behind them.

`python -m biflow_jax.tools.ablate` runs them; this module only says what they are.
Every G of every study learns, with the same steps, seed and data order, from one F
(`FORWARDS`: the config's F, or for the norm-control study a second F without clip). The
ablation base G is the paper's: hidden alignment, learned denoising, norm control, plain
MSE, no training-time CFG, sampled at w = 0 (`BASE_G`, `BASE_SAMPLE`); each row changes
one thing (`ROWS`). Rows that need the same training share it (`Row.training`), and rows
scored the same way share an evaluation (`Row.eval`):
- the base G is a row of every study;
- objective.denoise 'score' and 'none' train the same G (`biflow.reverse_loss`: both pull
  G's end point to x~, with the x^0 projection dropped), so one G is scored twice, with
  and without F's score denoising at sampling time;
- ordinary 2-NFE CFG guides the base G (trained with label dropout, so it has an
  unconditional mode) in two passes (`sample.reverse_cfg='two_pass'`);
- F's exact inverse is scored on the base G's workdir, whose F EMA is F's own (copied by
  init_from and never trained there).
Paper numbers: FID, ImageNet 256, B/2, without CFG unless the row says otherwise.

A second base, `--base=guided` (`BASES`), keeps what the MNIST default's G trains with
(training-time CFG and the config's perceptual terms) and scores every row at the config's
guided cells (`sample.guidance`/`temperature` for F's inverse, `sample.reverse_guidance`/
`reverse_temperature` for G): the paper's base collapses without guidance at our budget
(recall 0.02-0.20, docs/ablations.md), so the supervision, denoising and
norm-control orderings are re-tested between G's that work guided. Only those three studies
take it: distance and guidance vary what the guided base keeps.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Iterable

import ml_collections
from etils import epath

from biflow_jax import config_lib
from biflow_jax.inference import decoders
from biflow_jax.objective import phases

STUDIES = ('supervision', 'denoising', 'norm_control', 'distance', 'guidance')
OBJECTIVE_STUDY = 'objective'  # tools/objective_study.py; not part of 'all'
PERCEPTUAL_WEIGHTS = ('perceptual.feature_weight', 'perceptual.lpips_weight',
                      'perceptual.convnext_weight')


@dataclasses.dataclass(frozen=True)
class FromConfig:
  """A value taken from the user's config (resolved by `resolve`)."""
  field: str


class GuidanceScale:
  """The config's guidance scale for G (decoders.reverse_guidance)."""


BASE_G = {'objective.reverse_mode': 'align', 'reverse.head_mode': 'per_stage',
          'objective.denoise': 'learned', 'objective.norm_control': True,
          'objective.cfg_w_max': 0.0, **{f: 0.0 for f in PERCEPTUAL_WEIGHTS}}
BASE_SAMPLE = {'sample.guidance': 0.0, 'sample.reverse_guidance': 0.0,
               'sample.reverse_cfg': 'input'}


@dataclasses.dataclass(frozen=True)
class Base:
  """What every G of a study keeps unless its row changes it, and how rows are sampled."""
  g: dict                       # overrides of the config for every G (and its F run)
  sample: dict                  # overrides of the config's sample group for every row
  studies: tuple[str, ...]      # the studies that can run on this base
  scores_guided: bool           # rows sampled at the config's guidance (needs CFG training)
  description: str


BASES = {
    'paper': Base(BASE_G, BASE_SAMPLE, STUDIES, False,
                  "the paper's ablation base: hidden alignment, learned denoising, norm "
                  'control, MSE only, no training-time CFG, sampled at w = 0'),
    'guided': Base({k: BASE_G[k] for k in ('objective.reverse_mode', 'reverse.head_mode',
                                           'objective.denoise', 'objective.norm_control')},
                   {'sample.reverse_cfg': 'input'}, ('supervision', 'denoising', 'norm_control'),
                   True,
                   "the MNIST default's G (issue 28's base): hidden alignment, learned "
                   "denoising, norm control, the config's training-time CFG and perceptual "
                   "terms, every row sampled at the config's guided cells"),
}


def parse_base(name: str, studies: Iterable[str]) -> Base:
  """BASES[name], checked against the studies; raises ValueError naming the fix."""
  if name not in BASES:
    raise ValueError(f'--base={name!r}: use one of {", ".join(BASES)}')
  other = [s for s in studies if s not in BASES[name].studies]
  if other:
    raise ValueError(f'--base={name} holds the studies {", ".join(BASES[name].studies)} only, '
                     f'not {", ".join(other)} (they vary what this base keeps): drop them from '
                     '--study or use --base=paper')
  return BASES[name]

#: F settings: name -> overrides of the config's F.
FORWARDS = {'default': {}, 'no_clip': {'model.clip': None}}

#: G trainings: name -> (F setting, overrides of BASE_G).
TRAININGS = {
    'base': ('default', {}),
    'naive': ('default', {'objective.reverse_mode': 'naive'}),
    'hidden': ('default', {'objective.reverse_mode': 'hidden', 'reverse.head_mode': 'shared'}),
    'denoise_at_sampling': ('default', {'objective.denoise': 'score'}),
    'no_norm_control': ('no_clip', {'objective.norm_control': False}),
    'perceptual': ('default', {f: FromConfig(f) for f in PERCEPTUAL_WEIGHTS}),
    'cfg': ('default', {'objective.cfg_w_max': FromConfig('objective.cfg_w_max')}),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a study's table: a training, scored by one decoder with sample overrides."""
  study: str
  name: str
  label: str
  training: str                 # a TRAININGS key
  eval: str                     # evaluations of the same name are one evaluation
  decoder: str = 'reverse'      # 'reverse' (G) | 'exact' (F's exact inverse)
  sample: dict = dataclasses.field(default_factory=dict)  # overrides of BASE_SAMPLE
  paper_fd: float | None = None
  note: str = ''


_SCORE = {'sample.denoise': 'score'}
ROWS = (
    Row('supervision', 'exact_inverse', "F's exact inverse + score denoising", 'base',
        'exact_inverse', 'exact', _SCORE, 44.46, "F's own inverse (serial), no G"),
    Row('supervision', 'naive', 'naive distillation', 'naive', 'naive', paper_fd=43.41),
    Row('supervision', 'hidden', 'hidden distillation', 'hidden', 'hidden', paper_fd=55.00),
    Row('supervision', 'align', 'hidden alignment', 'base', 'base', paper_fd=36.93),
    Row('denoising', 'learned', 'learned denoising', 'base', 'base', paper_fd=31.88),
    Row('denoising', 'score', "score denoising (F's score at sampling)", 'denoise_at_sampling',
        'score', sample=_SCORE, paper_fd=42.62, note="same G as 'none', scored with denoising"),
    Row('denoising', 'none', 'no denoising', 'denoise_at_sampling', 'no_denoise',
        sample={'sample.denoise': 'none'}, paper_fd=100.51),
    Row('norm_control', 'on', 'norm control on', 'base', 'base', paper_fd=31.88),
    Row('norm_control', 'off', 'norm control off (F without clip, G without normalisation)',
        'no_norm_control', 'no_norm_control', paper_fd=45.54),
    Row('distance', 'mse', 'MSE only', 'base', 'base', paper_fd=31.88),
    Row('distance', 'perceptual', "MSE + the config's perceptual terms", 'perceptual',
        'perceptual', paper_fd=2.46,
        note="paper's closest row is +LPIPS+ConvNeXt (2.46); here the config's terms"),
    Row('guidance', 'none', 'no guidance (w = 0)', 'base', 'base',
        note='G trained without training-time CFG; no paper number'),
    Row('guidance', 'cfg_1nfe', 'training-time CFG, 1 NFE', 'cfg', 'cfg_1nfe',
        sample={'sample.reverse_guidance': GuidanceScale()}, paper_fd=6.79,
        note='paper: with CFG'),
    Row('guidance', 'cfg_2nfe', 'ordinary CFG on G, 2 NFE', 'base', 'cfg_2nfe',
        sample={'sample.reverse_guidance': GuidanceScale(), 'sample.reverse_cfg': 'two_pass'},
        paper_fd=6.90, note='paper: with CFG; the base G (label dropout) in two passes'),
)


#: Written last, atomically, in a finished training's workdir.
DONE = 'ablate_done.json'


@dataclasses.dataclass
class Job:
  """One unit of work of `tools/ablate`, done when `record` exists."""
  kind: str                    # 'F' | 'G' | 'run' (a whole training) | 'eval' | 'sweep'
  name: str
  config: ml_collections.ConfigDict
  workdir: epath.Path          # where it trains, or the run it evaluates
  record: epath.Path           # written last, atomically, when the job is finished
  key: dict                    # what a finished record must match
  cost: float                  # in the kind's units: steps (x2 for CFG), 1 evaluation, cells
  row: Row | None = None


#: A swept evaluation's starting-grid spacing per decoder, (dw, dt): the exact inverse's FD
#: moves faster with w and t than G's (docs/ablations.md's sweeps, MNIST).
SWEEP_SPACING = {'reverse': (0.5, 0.15), 'exact': (0.25, 0.075), 'fixed_point': (0.25, 0.075)}
SWEEP_GRID_CELLS = 9  # the largest starting grid, 3 w x 3 t (`sweep_grid`)


def sweep_grid(eval_config: ml_collections.ConfigDict, decoder: str
               ) -> tuple[list[float], list[float], bool]:
  """(ws, ts, fix_w): `tools/sweep`'s starting grid around an evaluation's own cell (w, t),
  w - dw, w, w + dw (those >= 0) by t - dt, t, t + dt (SWEEP_SPACING); an unguided
  evaluation (w = 0, the paper's protocol) searches t only, at w = 0."""
  w = float(decoders.decoder_guidance(eval_config, decoder))
  t = float(decoders.decoder_temperature(eval_config, decoder))
  dw, dt = SWEEP_SPACING[decoder]
  ts = [round(x, 6) for x in (t - dt, t, t + dt) if x > 0]
  if w == 0:
    return [0.0], ts, True
  return [round(x, 6) for x in (w - dw, w, w + dw) if x >= 0], ts, False


def sweep_job(evaluation: Job, cells: int, workdir: epath.Path) -> Job:
  """The search (`tools/sweep`, `cells` cells) around an evaluation job's cell, on the same
  run and config; its record is DIR/sweeps/<name>.json, the search's own files
  DIR/sweeps/<name>/sweep_<decoder>.{json,md}."""
  ws, ts, fix_w = sweep_grid(evaluation.config, evaluation.row.decoder)
  key = {'evaluation': evaluation.key, 'cells': int(cells), 'w': ws, 't': ts, 'fix_w': fix_w}
  return Job('sweep', evaluation.name, evaluation.config, evaluation.workdir,
             workdir / 'sweeps' / f'{evaluation.name}.json', key, float(cells), evaluation.row)


def with_sweeps(jobs: list[Job], cells: int, workdir: epath.Path) -> list[Job]:
  """`jobs` with each evaluation followed by its sweep (`sweep_job`); `jobs` if cells == 0."""
  if cells <= 0:
    return list(jobs)
  out = []
  for job in jobs:
    out.append(job)
    if job.kind == 'eval':
      out.append(sweep_job(job, cells, workdir))
  return out


def best_cell(sweep_record: dict | None) -> dict | None:
  """What a table shows of a finished sweep: its best cell and how the search ended."""
  if sweep_record is None:
    return None
  b = sweep_record['best']
  return {'w': b['w'], 't': b['t'], 'frechet_distance': b['frechet_distance'],
          'class_accuracy': b.get('class_accuracy'), 'recall': b['recall'],
          'cells': sweep_record['cells_scored'], 'converged': sweep_record['converged']}


def format_best(best: dict | None) -> str:
  """A table cell for `best_cell`: 'w, t -> FD / acc. / recall (cells, converged or not)'."""
  if best is None:
    return '-'
  acc = format_value(best['class_accuracy'], '.3f')
  end = 'converged' if best['converged'] else 'budget spent'
  return (f"{best['w']:g}, {best['t']:g} -> {format_value(best['frechet_distance'], '.1f')} / "
          f"{acc} / {format_value(best['recall'], '.2f')} ({best['cells']}, {end})")


# ------------------------------------------------------------------------------ selection

def parse_studies(spec: str) -> tuple[str, ...]:
  """'all', a comma-separated list of STUDIES, or 'objective' alone (the joint-objective
  study, `tools/objective_study.py`, which trains whole runs, not G's from one F) -> the
  studies in table order.

  Raises ValueError naming an unknown study and listing the valid ones.
  """
  names = [s.strip() for s in spec.split(',') if s.strip()]
  if names == ['all']:
    return STUDIES
  if OBJECTIVE_STUDY in names:
    if names != [OBJECTIVE_STUDY]:
      raise ValueError(f"--study={spec!r}: '{OBJECTIVE_STUDY}' runs alone (it trains whole "
                       'runs at equal wall time); give it in a separate call with its own '
                       '--workdir')
    return (OBJECTIVE_STUDY,)
  unknown = [s for s in names if s not in STUDIES]
  if unknown or not names:
    raise ValueError(f'--study={spec!r}: unknown study {unknown or spec!r}; use one of '
                     f"{', '.join(STUDIES)} (comma-separated), 'all', or "
                     f"'{OBJECTIVE_STUDY}' alone")
  return tuple(s for s in STUDIES if s in names)


def rows(studies: Iterable[str]) -> tuple[Row, ...]:
  chosen = set(studies)
  return tuple(r for r in ROWS if r.study in chosen)


def trainings(studies: Iterable[str]) -> tuple[str, ...]:
  """The G trainings the studies need, each once, in first-use order."""
  return tuple(dict.fromkeys(r.training for r in rows(studies)))


def forwards(studies: Iterable[str]) -> tuple[str, ...]:
  """The F settings the studies' trainings start from, each once."""
  return tuple(dict.fromkeys(TRAININGS[t][0] for t in trainings(studies)))


def evaluations(studies: Iterable[str]) -> dict[str, Row]:
  """Evaluation name -> the first row that asks for it (rows sharing a name are scored once)."""
  out: dict[str, Row] = {}
  for r in rows(studies):
    out.setdefault(r.eval, r)
  return out


# ------------------------------------------------------------------------ derived configs

def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  for part in field.split('.'):
    config = config[part]
  return config


def resolve(value: Any, config: ml_collections.ConfigDict) -> Any:
  if isinstance(value, FromConfig):
    return _get(config, value.field)
  if isinstance(value, GuidanceScale):
    return decoders.reverse_guidance(config)
  return value


def _with(config: ml_collections.ConfigDict, overrides: dict, source=None):
  out = config.copy_and_resolve_references()
  for field, value in overrides.items():
    *groups, leaf = field.split('.')
    group = out
    for g in groups:
      group = group[g]
    group[leaf] = resolve(value, source if source is not None else config)
  return out


def uses_given_forward(config: ml_collections.ConfigDict, forward: str) -> bool:
  """True when F is config.model.init_from (the default F setting only), not trained here."""
  return forward == 'default' and bool(config.model.init_from)


def forward_config(config: ml_collections.ConfigDict, forward: str,
                   base: str = 'paper') -> ml_collections.ConfigDict:
  """F alone (plan forward_only, G off) for an F setting."""
  sample_decoder = 'exact' if config.sample.decoder == 'reverse' else config.sample.decoder
  b = BASES[base]
  return _with(config, {**b.g, **FORWARDS[forward], 'model.init_from': '',
                        'reverse.enabled': False, 'schedule.plan': 'forward_only',
                        'schedule.joint_steps': 0, 'schedule.reverse_steps': 0,
                        'schedule.forward_steps': _forward_steps(config),
                        'sample.decoder': sample_decoder, **b.sample})


def _forward_steps(config) -> int:
  return int(config.schedule.forward_steps)


def reverse_config(config: ml_collections.ConfigDict, training: str,
                   forward_run: str, base: str = 'paper') -> ml_collections.ConfigDict:
  """G alone (plan reverse_only) from the F in `forward_run` (a workdir or init_from source)."""
  forward, overrides = TRAININGS[training]
  b = BASES[base]
  return _with(config, {**b.g, **FORWARDS[forward], **overrides,
                        'model.init_from': str(forward_run), 'reverse.enabled': True,
                        'schedule.plan': 'reverse_only', 'schedule.forward_steps': 0,
                        'schedule.joint_steps': 0, **b.sample})


def eval_config(config: ml_collections.ConfigDict, row: Row,
                forward_run: str, base: str = 'paper') -> ml_collections.ConfigDict:
  """The row's G config, sampled as the row says and scored with its decoder only."""
  g = reverse_config(config, row.training, forward_run, base)
  return _with(g, {**row.sample, 'eval.decoders': row.decoder}, source=config)


# ------------------------------------------------------------------------------- checks

def check(config: ml_collections.ConfigDict, studies: Iterable[str],
          base: str = 'paper') -> None:
  """Every variant of the studies can run with this config on this base; raises ValueError
  naming the problem and the fix before anything trains."""
  studies = tuple(studies)
  if parse_base(base, studies).scores_guided and (config.objective.cfg_w_max <= 0 or
                                                  decoders.reverse_guidance(config) <= 0):
    raise ValueError(f'--base={base} scores G guided, as the config trains it: set '
                     'config.objective.cfg_w_max > 0 and config.sample.reverse_guidance > 0 '
                     '(configs/mnist.py: 3.0 and 1.0), or use --base=paper')
  plan = config.schedule.plan
  if not config.reverse.enabled:
    raise ValueError('the ablations train the reverse model G: set --config.reverse.enabled=True')
  if plan not in ('two_stage', 'reverse_only'):
    raise ValueError(f'config.schedule.plan={plan!r}: the ablations train F, then G against the '
                     "frozen F (the paper's schedule); use --config.schedule.plan=two_stage "
                     "(or reverse_only with --config.model.init_from=<a trained F>)")
  if int(config.schedule.reverse_steps) <= 0:
    raise ValueError('config.schedule.reverse_steps must be > 0: every G trains that many steps')
  trained = [f for f in forwards(studies) if not uses_given_forward(config, f)]
  if trained and _forward_steps(config) <= 0:
    raise ValueError(f'F setting(s) {trained} are trained here but '
                     f'config.schedule.forward_steps={config.schedule.forward_steps}: use '
                     '--config.schedule.plan=two_stage with --config.schedule.forward_steps > 0')
  if 'norm_control' in studies and config.model.clip is None:
    raise ValueError("the norm_control study compares the config's F (with clip) against one "
                     'without: set config.model.clip (e.g. 3.0)')
  if 'distance' in studies and not any(_get(config, f) > 0 for f in PERCEPTUAL_WEIGHTS):
    raise ValueError('the distance study adds the config\'s perceptual terms to MSE, but all of '
                     f'{PERCEPTUAL_WEIGHTS} are 0: set e.g. --config.perceptual.feature_weight=1.0')
  if 'guidance' in studies:
    w = decoders.reverse_guidance(config)
    problems = [text for bad, text in (
        (not config.model.num_classes, 'a class-conditional model (config.model.num_classes > 0)'),
        (config.objective.label_drop_prob <= 0,
         'label dropout (config.objective.label_drop_prob > 0) for an unconditional mode'),
        (config.objective.cfg_w_max <= 0, 'training-time CFG (config.objective.cfg_w_max > 0)'),
        (w <= 0, 'a guidance scale for G (config.sample.reverse_guidance > 0)')) if bad]
    if problems:
      raise ValueError('the guidance study needs ' + '; '.join(problems))
  # Every derived config must itself be valid (e.g. a guidance scale above cfg_w_max).
  for f in forwards(studies):
    if not uses_given_forward(config, f):
      _validate(forward_config(config, f, base), f'F {f!r}')
  for name, row in evaluations(studies).items():
    _validate(eval_config(config, row, '<F run>', base), f'evaluation {name!r}')


def _validate(config: ml_collections.ConfigDict, what: str) -> None:
  try:
    config_lib.validate(config)
    phases.build_phase_plan(config)
  except ValueError as e:
    raise ValueError(f'the ablation {what} cannot run with this config: {e}') from e


# ----------------------------------------------------------------------------- results

#: Config groups that do not change what a training computes.
_NOT_TRAINING = ('sample', 'eval', 'bench', 'export', 'edit', 'likelihood')


def training_key(config: ml_collections.ConfigDict) -> dict:
  """What a training depends on (the config without its sampling and evaluation groups),
  as plain JSON, to tell a finished run of this config from one of another."""
  return training_key_of(json.loads(config.to_json_best_effort()))


def config_key(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def ordering(measured: list[dict]) -> dict:
  """Whether the paper's rank order of FD holds among rows that have a paper number.

  measured: [{'name', 'paper_fd', 'frechet_distance'}]. Returns {'holds': bool | None
  (None with fewer than two such rows), 'broken': ['a < b in the paper, not here', ...]}.
  """
  # A non-finite FD is a string in a record read back (files.json_text): it does not rank.
  ranked = [m for m in measured if m.get('paper_fd') is not None
            and isinstance(m.get('frechet_distance'), (int, float))]
  broken = []
  for a, b in itertools.combinations(ranked, 2):
    if a['paper_fd'] > b['paper_fd']:
      a, b = b, a
    if a['paper_fd'] < b['paper_fd'] and not a['frechet_distance'] < b['frechet_distance']:
      broken.append(f"{a['name']} < {b['name']} in the paper "
                    f"({a['paper_fd']:g} < {b['paper_fd']:g}), not here "
                    f"({a['frechet_distance']:.4g} >= {b['frechet_distance']:.4g})")
  return {'holds': None if len(ranked) < 2 else not broken, 'broken': broken}


def training_key_of(saved_config: dict) -> dict:
  """`training_key` of a config as a run's config.json stores it."""
  return {k: v for k, v in saved_config.items() if k not in _NOT_TRAINING}


def _row_result(row: Row, evaluation: dict, training: dict | None,
                sweep: dict | None = None) -> dict:
  entry, num = evaluation['entry'], evaluation['eval']['num_samples']
  uses_g = row.decoder == 'reverse'
  return {
      'name': row.name, 'label': row.label, 'training': row.training if uses_g else None,
      'evaluated_in': row.training,
      'forward': TRAININGS[row.training][0], 'decoder': row.decoder, 'evaluation': row.eval,
      'frechet_distance': entry['frechet_distance'],
      'class_accuracy': entry.get('class_accuracy'),
      'precision': entry['precision'], 'recall': entry['recall'],
      # Measured during the evaluation, the sampler's compilation (first batch) included.
      'ms_per_image': 1e3 * entry['sampling_seconds'] / num,
      'guidance': entry.get('guidance'), 'temperature': entry.get('temperature'),
      'num_samples': num, 'step': evaluation['step'],
      'paper_fd': row.paper_fd, 'note': row.note,
      'training_seconds': None if training is None or not uses_g else training['seconds'],
      'eval_seconds': evaluation['seconds'],
      'best': best_cell(sweep), 'sweep_seconds': None if sweep is None else sweep['seconds'],
  }


def report(config: ml_collections.ConfigDict, studies: Iterable[str], forward_runs: dict,
           reverse_runs: dict, evaluations_done: dict, base: str = 'paper',
           sweeps: dict | None = None) -> dict:
  """The content of DIR/ablations.json from the job records (name -> record of each kind;
  `sweeps` by evaluation name, where the evaluations were swept)."""
  sweeps = sweeps or {}
  out: dict[str, Any] = {'studies': {}, 'base': base,
                         'base_description': BASES[base].description}
  for study in studies:
    results = [_row_result(r, evaluations_done[r.eval], reverse_runs.get(r.training),
                           sweeps.get(r.eval)) for r in rows([study])]
    out['studies'][study] = {'rows': results, 'paper_ordering': ordering(results)}
    if all(r['best'] for r in results):  # swept: the ordering at each row's best cell too
      out['studies'][study]['paper_ordering_best'] = ordering(
          [dict(r, frechet_distance=r['best']['frechet_distance']) for r in results])
  strip = lambda records: {name: {k: v for k, v in r.items() if k not in ('key', 'eval', 'entry')}
                           for name, r in records.items()}
  out.update(forward_runs=strip(forward_runs), reverse_runs=strip(reverse_runs),
             evaluations=strip(evaluations_done), sweeps=strip(sweeps),
             config=config_key(config))
  if config.model.init_from:
    out['given_forward'] = str(config.model.init_from)
  return out


def format_value(value, spec: str) -> str:
  """A table cell: '-' for None, a string as is (a non-finite number read back from JSON),
  else format(value, spec)."""
  if value is None:
    return '-'
  return value if isinstance(value, str) else format(value, spec)


def markdown(report_: dict) -> str:
  """DIR/ablations.md: the command, the config's main fields, one table per study with the
  paper's ordering, and the wall time of every run."""
  c = report_['config']
  lines = ['# Ablations', '', f"Command: `{report_.get('command', '')}`", '',
           f"Config: batch {c['batch_size']}, seed {c['seed']}, F {c['schedule']['forward_steps']} "
           f"steps, every G {c['schedule']['reverse_steps']} steps (plan reverse_only from its F), "
           f"{c['eval']['num_samples']} samples per evaluation, features: {c['eval']['feature_net']}"
           + (f", F given by model.init_from={report_['given_forward']}"
              if 'given_forward' in report_ else '') + ' (full config in ablations.json).', '',
           f"Base (--base={report_['base']}): {report_['base_description']}.", '',
           'FD: Frechet distance of the evaluation (evaluation.evaluate); ms/img: sampling '
           'seconds / samples, measured during the evaluation (compilation of the first batch '
           'included). Paper: FID on ImageNet 256, B/2, without CFG unless the note says so.', '']
  swept = any(r.get('best') for t in report_['studies'].values() for r in t['rows'])
  if swept:
    lines += ["Best of the sweep: the best cell by FD of `tools/sweep`'s search around the "
              "row's own cell (w, t -> FD / class acc. / recall; cells scored, and whether "
              'FD stopped improving at the grid\'s edges); w stays 0 for an unguided row.', '']
  for study, table in report_['studies'].items():
    lines += [f'## {study}', '',
              '| row | w | FD | class acc. | precision | recall | ms/img | paper FID | G training | '
              'G train s | eval s | note |' + (' best of the sweep |' if swept else ''),
              '|' + '---|' * (13 if swept else 12)]
    for r in table['rows']:
      best = f" {format_best(r.get('best'))} |" if swept else ''
      lines.append(
          f"| {r['label']} | {format_value(r['guidance'], 'g')} | {format_value(r['frechet_distance'], '.2f')} | "
          f"{format_value(r['class_accuracy'], '.3f')} | {format_value(r['precision'], '.3f')} | "
          f"{format_value(r['recall'], '.3f')} | {format_value(r['ms_per_image'], '.3f')} | "
          f"{format_value(r['paper_fd'], '.2f')} | {r['training'] or '- (F only)'} | "
          f"{format_value(r['training_seconds'], '.0f')} | {format_value(r['eval_seconds'], '.0f')} | {r['note']} |"
          + best)
    verdict = lambda order: {None: 'n/a (fewer than two rows with a paper number)', True: 'yes',
                             False: 'no: ' + '; '.join(order['broken'])}[order['holds']]
    lines += ['', f"Paper's ordering of FD holds here: {verdict(table['paper_ordering'])}", '']
    if 'paper_ordering_best' in table:
      lines += [f"At each row's best cell of the sweep: {verdict(table['paper_ordering_best'])}",
                '']
  lines += ['## Runs', '', '| kind | name | steps | wall s |', '|---|---|---|---|']
  for kind, key in (('F', 'forward_runs'), ('G', 'reverse_runs'), ('eval', 'evaluations'),
                    ('sweep', 'sweeps')):
    for name, r in report_.get(key, {}).items():
      lines.append(f"| {kind} | {name} | {r.get('steps', r.get('step', '-'))} | "
                   f"{format_value(r.get('seconds'), '.0f')} |")
  if 'wall_seconds_this_call' in report_:
    lines += ['', f"Wall time of this call: {report_['wall_seconds_this_call']:.0f} s "
                  f"({len(report_.get('jobs_run', []))} jobs run, the rest already done)."]
  return '\n'.join(lines) + '\n'
