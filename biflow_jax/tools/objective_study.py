"""The joint-objective study (`tools/ablate --study=objective`): the founding description's
joint objective and progressive plan against the paper's two stages, at equal wall time.

    python -m biflow_jax.tools.ablate --config=configs/mnist.py --study=objective --workdir=DIR

Every row (`ARMS`) trains from scratch with the config's F, G, seed and data order and
changes only what trains when and on which targets (docs/experiments/objective.md defines
each row; docs/method.md §4.7 inverse matching, §4.10 token weighting, §5 the plans):
- F only: F by NLL for the whole budget, scored by its exact inverse + score denoising;
- two stages (the paper): F for the config's forward_steps, then G alone, by hidden
  alignment (the config's G recipe) or by inverse matching on fresh noise;
- progressive (the founding description): F alone for half the config's forward_steps,
  then F and G together (NLL + lambda * reverse loss), then G alone; inverse matching with
  lambda 0.5, 1, 2, with importance (token) weighting, or alignment with prior rows.

Equal wall time. The budget B is the config's own two-stage run in F-step units,
forward_steps + reverse_steps * c(G step), where c(kind) is the time of one step of that
kind over one F step, measured at the start on this machine and config (`measure_costs`,
kept in DIR/step_costs.json so a resumed study keeps its step counts). A progressive row
spends what its F phase leaves half on joint steps and half on G-only steps.

Each row is scored twice by `--mode=eval`'s protocol: unguided (w = 0, the paper's
ablation protocol) and at the config's guidance scale; both at the config's temperature.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

from biflow_jax import config_lib
from biflow_jax.objective import phases
from biflow_jax.runtime import files
from biflow_jax.tools import ablations
from biflow_jax.tools.step_time_ab import random_batch
from biflow_jax.training import init_from
from biflow_jax.training.experiment import build_experiment

STUDY = 'objective'
COSTS_FILE = 'step_costs.json'

# Inverse matching has no data image, so the config's perceptual/feature terms are off in
# its rows (config_lib.validate refuses them with it rather than dropping them silently).
_IM = {'objective.reverse_target': 'inverse_matching', 'objective.prior_fraction': 0.0,
       'perceptual.lpips_weight': 0.0, 'perceptual.convnext_weight': 0.0,
       'perceptual.feature_weight': 0.0}
_PRIOR = {'objective.reverse_target': 'trajectory', 'objective.prior_fraction': 0.25}

#: Step kinds whose cost sets the rows' step counts: kind -> (phase timed, overrides).
COST_KINDS: dict[str, tuple[str, dict]] = {
    'F': ('forward', {}),
    'G align': ('reverse', {}),
    'G inverse matching': ('reverse', _IM),
    'G align + prior rows': ('reverse', _PRIOR),
    'joint inverse matching': ('joint', _IM),
    'joint align + prior rows': ('joint', _PRIOR),
}
#: Kinds whose cost depends on F's weights: inverse matching's target is F's fixed-point
#: inverse, whose Jacobi sweeps run until objective.inverse_tol. An untrained F converges in
#: a sweep or two and a trained one needs many: measured at the MNIST default, 1.62 F steps
#: per G IM step with F at its initialisation, but a G IM step ran at 0.86 steps/s on the
#: trained F against a G align step's 1.9 (docs/experiments/objective.md). So these kinds are
#: measured again on the shared F's trained weights before a row using them is planned.
TRAINED_F_KINDS = ('G inverse matching', 'joint inverse matching')


@dataclasses.dataclass(frozen=True)
class Arm:
  """One row: how it trains (plan), the objective overrides, the step kinds it uses."""
  name: str
  label: str
  plan: str                   # 'forward_only' | 'two_stage' | 'progressive'
  overrides: dict = dataclasses.field(default_factory=dict)
  joint_kind: str = ''        # COST_KINDS key of its joint step (progressive)
  reverse_kind: str = ''      # COST_KINDS key of its G-only step

  @property
  def decoder(self) -> str:
    return 'exact' if self.plan == 'forward_only' else 'reverse'


ARMS = (
    Arm('forward_only', "F only (its exact inverse + score denoising)", 'forward_only'),
    Arm('two_stage_align', 'F, then G by hidden alignment (the paper)', 'two_stage',
        reverse_kind='G align'),
    Arm('two_stage_im', "F, then G by inverse matching (the reading of 'reverse loss only')",
        'two_stage', _IM, reverse_kind='G inverse matching'),
    *(Arm(f'joint_im_lambda_{lam:g}'.replace('.', 'p'),
          f'progressive, inverse matching, lambda {lam:g}', 'progressive',
          {**_IM, 'objective.reverse_weight': lam}, 'joint inverse matching',
          'G inverse matching') for lam in (0.5, 1.0, 2.0)),
    Arm('joint_im_weighted', 'progressive, inverse matching, lambda 1, importance weighting',
        'progressive', {**_IM, 'objective.token_weighting': True}, 'joint inverse matching',
        'G inverse matching'),
    Arm('joint_align_prior', 'progressive, alignment + inverse pairs of fresh noise (1/4 of '
        'each batch)', 'progressive', _PRIOR, 'joint align + prior rows', 'G align + prior rows'),
)
ARM_NAMES = tuple(a.name for a in ARMS)
#: The two scorings of every row: name -> (G's guidance, F's inverses' guidance); None =
#: the config's own.
SCORINGS = {'unguided': 0.0, 'guided': None}


# ----------------------------------------------------------------------------- configs

def _with(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  out = config.copy_and_resolve_references()
  out.update_from_flattened_dict(overrides)
  return out


def budget(config: ml_collections.ConfigDict, costs: dict[str, float]) -> float:
  """The config's two-stage run in F-step units: forward_steps + reverse_steps * c(G)."""
  s = config.schedule
  return int(s.forward_steps) + int(s.reverse_steps) * costs['G align']


def schedule(arm: Arm, config: ml_collections.ConfigDict, costs: dict[str, float]
             ) -> dict[str, int]:
  """The arm's (forward_steps, joint_steps, reverse_steps) filling the budget.

  Raises ValueError when the budget leaves a phase no step (the fix: more steps)."""
  b, forward = budget(config, costs), int(config.schedule.forward_steps)
  if arm.plan == 'forward_only':
    steps = {'forward_steps': round(b), 'joint_steps': 0, 'reverse_steps': 0}
  elif arm.plan == 'two_stage':
    g = round((b - forward) / costs[arm.reverse_kind])
    steps = {'forward_steps': forward, 'joint_steps': 0, 'reverse_steps': g}
  else:
    first = forward // 2
    half = (b - first) / 2
    steps = {'forward_steps': first, 'joint_steps': round(half / costs[arm.joint_kind]),
             'reverse_steps': round(half / costs[arm.reverse_kind])}
  empty = [k for k, v in steps.items() if v <= 0 and (
      k == 'forward_steps' or arm.plan == 'progressive' or
      (k == 'reverse_steps' and arm.plan == 'two_stage'))]
  if empty:
    raise ValueError(f'objective study row {arm.name!r}: the budget ({b:.0f} F steps) leaves '
                     f'{", ".join(empty)} at 0; raise config.schedule.forward_steps and '
                     'reverse_steps')
  return steps


def budget_used(arm: Arm, steps: dict, costs: dict[str, float]) -> float:
  """F-step units an arm's schedule spends: its steps of each kind times their costs."""
  return (steps['forward_steps'] + steps['joint_steps'] * costs.get(arm.joint_kind, 0.0)
          + steps['reverse_steps'] * costs.get(arm.reverse_kind, 0.0))


def forward_run_config(config, steps: int) -> ml_collections.ConfigDict:
  """F alone (plan forward_only) for `steps` steps; its samples by the exact inverse."""
  return _with(config, {'schedule.plan': 'forward_only', 'schedule.forward_steps': steps,
                        'schedule.joint_steps': 0, 'schedule.reverse_steps': 0,
                        'reverse.enabled': False, 'model.init_from': '',
                        'sample.decoder': 'exact'})


def reverse_run_config(config, arm: Arm, steps: dict, forward_run: str):
  """G alone (plan reverse_only) from the F in forward_run, with the arm's objective."""
  return _with(config, {**arm.overrides, 'schedule.plan': 'reverse_only',
                        'schedule.forward_steps': 0, 'schedule.joint_steps': 0,
                        'schedule.reverse_steps': steps['reverse_steps'],
                        'model.init_from': str(forward_run)})


def progressive_run_config(config, arm: Arm, steps: dict):
  return _with(config, {**arm.overrides, 'schedule.plan': 'progressive',
                        'model.init_from': '',
                        **{f'schedule.{k}': v for k, v in steps.items()}})


def eval_config(train_config, arm: Arm, scoring: str, source) -> ml_collections.ConfigDict:
  """The training's config scored by the arm's decoder, unguided or at `source`'s guidance."""
  w = SCORINGS[scoring]
  g_w = source.sample.reverse_guidance if w is None else w
  f_w = source.sample.guidance if w is None else w
  extra = {'sample.denoise': 'score'} if arm.decoder == 'exact' else {}
  return _with(train_config, {'eval.decoders': arm.decoder, 'sample.reverse_guidance': g_w,
                              'sample.guidance': f_w, **extra})


# ------------------------------------------------------------------------------ checks

def check(config: ml_collections.ConfigDict) -> None:
  """The study can run with this config; ValueError naming the problem and the fix."""
  if not config.reverse.enabled:
    raise ValueError('the objective study trains G: set --config.reverse.enabled=True')
  if config.schedule.plan != 'two_stage':
    raise ValueError(f'config.schedule.plan={config.schedule.plan!r}: the objective study '
                     "takes its budget from the config's two-stage run; use "
                     '--config.schedule.plan=two_stage')
  if config.model.init_from:
    raise ValueError('the objective study trains every F itself (the progressive rows train F '
                     'with G): unset --config.model.init_from')
  if int(config.schedule.forward_steps) < 2 or int(config.schedule.reverse_steps) <= 0:
    raise ValueError('the objective study needs config.schedule.forward_steps >= 2 and '
                     'reverse_steps > 0 (its budget is that two-stage run)')
  if config.objective.reverse_target != 'trajectory' or config.objective.prior_fraction:
    raise ValueError("the objective study's base is the paper's G (hidden alignment on "
                     "trajectories); set objective.reverse_target='trajectory' and "
                     'prior_fraction=0 (the rows change them)')
  for kind in COST_KINDS:
    _validate(_cost_config(config, kind)[0], f'step-cost measurement {kind!r}')
  unit = {k: 1.0 for k in COST_KINDS}
  for arm in ARMS:
    steps = schedule(arm, config, unit)
    for scoring in SCORINGS:
      _validate(eval_config(_train_config(config, arm, steps, '<F run>'), arm, scoring, config),
                f'row {arm.name!r} ({scoring})')


def _validate(config, what: str) -> None:
  try:
    config_lib.validate(config)
    phases.build_phase_plan(config)
  except ValueError as e:
    raise ValueError(f'the objective study {what} cannot run with this config: {e}') from e


def _train_config(config, arm: Arm, steps: dict, forward_run: str):
  if arm.plan == 'forward_only':
    return forward_run_config(config, steps['forward_steps'])
  if arm.plan == 'two_stage':
    return reverse_run_config(config, arm, steps, forward_run)
  return progressive_run_config(config, arm, steps)


# ------------------------------------------------------------------------- step costs

def _cost_config(config, kind: str, forward_run: str = ''):
  phase, overrides = COST_KINDS[kind]
  steps = lambda f, j, r: {'schedule.forward_steps': f, 'schedule.joint_steps': j,
                           'schedule.reverse_steps': r}
  plan = {'forward': {'schedule.plan': 'forward_only', 'reverse.enabled': False,
                      **steps(10, 0, 0)},
          'reverse': {'schedule.plan': 'two_stage', **steps(10, 0, 10)},
          'joint': {'schedule.plan': 'progressive', **steps(10, 10, 10)}}[phase]
  return _with(config, {**overrides, **plan, 'model.init_from': forward_run}), phase


def alternating_step_seconds(variants: dict[str, tuple[ml_collections.ConfigDict, str]],
                             rounds: int, steps: int,
                             clock: Callable[[], float] = time.perf_counter,
                             log=print) -> dict[str, float]:
  """Seconds per train step of each variant: name -> (config, phase name timed).

  A variant whose config.model.init_from names a run (or TARFlow weights) starts F (params
  and EMA) from it, as the main job would. Each variant's phase is compiled with one step on
  a fixed random batch; then `rounds`
  rounds in which the variants alternate, `steps` steps each, timed by `clock` (wall time
  by default; a CPU-time clock counts all of XLA's threads). Returns the median over rounds.
  Alternating keeps the ratios fair on a shared machine."""
  runs = {}
  for name, (c, phase_name) in variants.items():
    exp = build_experiment(c)
    state = exp.create_state()
    if c.model.init_from:
      state = init_from.apply(state, init_from.load(exp))
    phase = next(p for p in exp.plan if p.name == phase_name)
    batch = exp.global_batch(random_batch(c))
    t0 = time.perf_counter()
    state, metrics = exp.step(state, batch, exp.frozen_params, phase)
    jax.block_until_ready(metrics)
    log(f'{name}: compiled in {time.perf_counter() - t0:.0f} s')
    runs[name] = [exp, state, batch, phase]
  seconds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      exp, state, batch, phase = run
      t0 = clock()
      for _ in range(steps):
        state, metrics = exp.step(state, batch, exp.frozen_params, phase)
      jax.block_until_ready(metrics)
      seconds[name].append((clock() - t0) / steps)
      run[1] = state
  return {name: statistics.median(v) for name, v in seconds.items()}


def measure_costs(config: ml_collections.ConfigDict, rounds: int = 3, steps: int = 5,
                  log=print, kinds: tuple[str, ...] = tuple(COST_KINDS),
                  forward_run: str = '') -> dict[str, Any]:
  """Seconds per train step of COST_KINDS `kinds` (F among them: the unit) at this config's
  size (`alternating_step_seconds`, wall time), F at its initialisation or, with
  `forward_run`, with that run's trained F. Returns {'seconds': {kind: s}, 'ratio':
  {kind: s / s_F}} and how it was measured."""
  if 'F' not in kinds:
    raise ValueError(f'measure_costs: kinds {kinds} must include F (the unit of the ratios)')
  median = alternating_step_seconds(
      {kind: _cost_config(config, kind, forward_run) for kind in kinds}, rounds, steps,
      log=lambda text: log(f'objective study: step kind {text}'))
  return {'seconds': median, 'ratio': {k: v / median['F'] for k, v in median.items()},
          'rounds': rounds, 'steps_per_round': steps, 'device': jax.devices()[0].device_kind}


def costs_key(config: ml_collections.ConfigDict) -> dict:
  """What the measured costs depend on: the training config without its step counts or its
  training seed (a step of one shape costs the same whatever its random numbers), so the
  seeds of one study can share one measurement (`step_costs`' costs_from)."""
  return _cost_relevant(ablations.training_key(config))


def _cost_relevant(key: dict) -> dict:
  key = {k: v for k, v in key.items() if k != 'seed'}
  key['schedule'] = {k: v for k, v in key.get('schedule', {}).items() if not k.endswith('_steps')}
  return key


def shared_forward(workdir: epath.PathLike) -> epath.Path:
  """The shared F run of the study: the two-stage rows' F, and the trained F the
  TRAINED_F_KINDS are costed on."""
  return epath.Path(workdir) / 'forward' / 'default'


def _check_costs_key(record: dict, key: dict, path) -> None:
  if _cost_relevant(record.get('key', {})) != key:  # older records keep their seed in 'key'
    raise ValueError(f'{path} holds step costs measured for another config; use a new '
                     '--workdir, or delete that file to measure again')


def needs_trained_forward(rows: tuple[str, ...]) -> bool:
  """Whether a row among `rows` takes a step whose cost depends on F's weights."""
  return any({arm.joint_kind, arm.reverse_kind} & set(TRAINED_F_KINDS)
             for arm in ARMS if arm.name in rows)


def awaits_trained_costs(workdir: epath.PathLike, rows: tuple[str, ...]) -> bool:
  """True while `rows` need TRAINED_F_KINDS costed on the shared F and DIR/step_costs.json
  has no such measurement yet (so only the shared F can be planned)."""
  record = files.read_json(epath.Path(workdir) / COSTS_FILE) or {}
  return needs_trained_forward(rows) and 'trained_forward' not in record


def _effective(record: dict) -> dict[str, float]:
  ratio = dict(record['ratio'])
  if 'trained_forward' in record:
    ratio.update({k: record['trained_forward']['ratio'][k] for k in TRAINED_F_KINDS})
  return ratio


def recorded_costs(workdir: epath.PathLike) -> dict[str, float]:
  """The step cost ratios DIR/step_costs.json holds now (`step_costs` wrote them; nothing is
  measured here)."""
  return _effective(files.read_json(epath.Path(workdir) / COSTS_FILE))


def costs_copied_from(workdir: epath.PathLike) -> str | None:
  """The step_costs.json DIR's costs were copied from (`step_costs`' costs_from), or None
  when they were measured in DIR."""
  return (files.read_json(epath.Path(workdir) / COSTS_FILE) or {}).get('copied_from')


def step_costs(config: ml_collections.ConfigDict, workdir: epath.Path, log=print,
               costs_from: str | epath.PathLike = '') -> dict[str, float]:
  """The step cost ratios from DIR/step_costs.json, or measured now and written there.

  Every kind is measured first with F at its initialisation. Once the shared F
  (`shared_forward`) has finished, the TRAINED_F_KINDS are measured again, alternating with
  F steps, on its trained weights and recorded under 'trained_forward'; from then on their
  ratios are those. `costs_from` (another study's DIR, e.g. the same config at another
  seed) is copied instead of measuring, when DIR has no costs yet: both studies then run the
  same step counts, and a row the copy costed on its trained F needs no shared F here.
  ValueError when a file holds another config's costs, or costs_from has none."""
  path = epath.Path(workdir) / COSTS_FILE
  record = files.read_json(path)
  key = costs_key(config)
  if record is None and costs_from:
    source = epath.Path(costs_from) / COSTS_FILE
    record = files.read_json(source)
    if record is None:
      raise ValueError(f'--costs_from={costs_from}: no {COSTS_FILE} there; name the workdir '
                       'of an objective study of this config that has measured its costs')
    _check_costs_key(record, key, source)
    record['copied_from'] = str(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, files.json_text(record, str(path)))
    log(f'objective study: step costs copied from {source} (not measured here)')
  elif record is not None:
    _check_costs_key(record, key, path)
  if record is None:
    log('objective study: measuring the step cost of each kind of step (sets equal wall time)')
    record = {**measure_costs(config, log=log), 'key': key}
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, files.json_text(record, str(path)))
  forward = shared_forward(workdir)
  if 'trained_forward' not in record and (forward / ablations.DONE).exists():
    log(f'objective study: measuring {", ".join(TRAINED_F_KINDS)} again on the trained F of '
        f'{forward} (their cost depends on F\'s weights)')
    record['trained_forward'] = {**measure_costs(config, log=log, kinds=('F',) + TRAINED_F_KINDS,
                                                 forward_run=str(forward)), 'run': str(forward)}
    files.write_text_atomic(path, files.json_text(record, str(path)))
  return _effective(record)


# -------------------------------------------------------------------------------- jobs

#: An arm's plan -> (ablate job kind of its training, folder of DIR it trains in).
_JOB_KIND = {'forward_only': ('F', 'forward'), 'two_stage': ('G', 'reverse'),
             'progressive': ('run', 'runs')}

def parse_rows(rows: str) -> tuple[str, ...]:
  """`--rows`: 'all' (every row in ARMS order) or comma-separated ARM_NAMES, run in the order
  given. Raises ValueError naming an unknown or repeated row."""
  if rows.strip() == 'all':
    return ARM_NAMES
  names = tuple(n.strip() for n in rows.split(',') if n.strip())
  unknown = [n for n in names if n not in ARM_NAMES]
  if unknown or not names:
    raise ValueError(f'--rows={rows!r}: unknown row(s) {", ".join(unknown) or "(none given)"};'
                     f" use 'all' or comma-separated of {', '.join(ARM_NAMES)}")
  if len(set(names)) != len(names):
    raise ValueError(f'--rows={rows!r} names a row twice')
  return names


def plan(config: ml_collections.ConfigDict, workdir: epath.Path, costs: dict[str, float],
         rows: tuple[str, ...] = ARM_NAMES):
  """The study's jobs for `rows` (ARM_NAMES, run in the order given): the shared F run when a
  two-stage row needs it or a row's step cost is still to be measured on it
  (`awaits_trained_costs`), then each row's training followed by its evaluations
  (ablations.Job)."""
  jobs = []
  default_f = shared_forward(workdir)
  by_name = {arm.name: arm for arm in ARMS}
  arms = [by_name[name] for name in rows]
  schedules = {arm.name: schedule(arm, config, costs) for arm in arms}
  fc = forward_run_config(config, int(config.schedule.forward_steps))
  if any(arm.plan == 'two_stage' for arm in arms) or awaits_trained_costs(workdir, rows):
    jobs.append(ablations.Job('F', 'default', fc, default_f, default_f / ablations.DONE,
                           ablations.training_key(fc), float(fc.schedule.forward_steps)))
  for arm in arms:
    steps = schedules[arm.name]
    kind, folder = _JOB_KIND[arm.plan]
    run = workdir / folder / arm.name
    # A two-stage row's F is the shared default F: its G job costs its G steps only.
    cost = budget_used(arm, dict(steps, forward_steps=0) if kind == 'G' else steps, costs)
    tc = _train_config(config, arm, steps, str(default_f))
    jobs.append(ablations.Job(kind, arm.name, tc, run, run / ablations.DONE,
                           ablations.training_key(tc), cost))
    for scoring in SCORINGS:
      ec = eval_config(tc, arm, scoring, config)
      name = f'{arm.name}.{scoring}'
      row = ablations.Row(STUDY, name, arm.label, arm.name, name, arm.decoder)
      jobs.append(ablations.Job('eval', name, ec, run, workdir / 'evals' / f'{name}.json',
                             ablations.config_key(ec), 1.0, row))
  return jobs


# ------------------------------------------------------------------------------ report

def _phases_text(steps: dict) -> str:
  return ' + '.join(f'{v} {k.split("_")[0]}' for k, v in steps.items() if v)


def report(config, costs: dict[str, float], records: dict[str, dict]) -> dict:
  """DIR/ablations.json's content: one row per arm, both scorings, the runs' seconds.

  records: ablate's id ('F:default', 'G:two_stage_im', 'eval:forward_only.guided', ...)
  -> finished record. A row whose training or evaluations are not all finished is listed
  under 'rows_not_run' (a study run by parts with --rows)."""
  rows, not_run = [], []
  for arm in ARMS:  # a row's sweeps (ablate --sweep_cells) are shown where they finished
    steps = schedule(arm, config, costs)
    kind = _JOB_KIND[arm.plan][0]
    needed = [f'{kind}:{arm.name}'] + [f'eval:{arm.name}.{s}' for s in SCORINGS]
    if arm.plan == 'two_stage':
      needed.append('F:default')
    if any(n not in records for n in needed):
      not_run.append(arm.name)
      continue
    seconds = records[f'{kind}:{arm.name}']['seconds']
    if arm.plan == 'two_stage':  # its F is the shared default F
      seconds += records['F:default']['seconds']
    used = budget_used(arm, steps, costs)
    row = {'name': arm.name, 'label': arm.label, 'plan': arm.plan, 'decoder': arm.decoder,
           'steps': steps, 'phases': _phases_text(steps), 'budget_used': used,
           'overrides': arm.overrides, 'training_seconds': seconds}
    for scoring in SCORINGS:
      ev = records[f'eval:{arm.name}.{scoring}']
      entry = ev['entry']
      row[scoring] = {k: entry.get(k) for k in (
          'frechet_distance', 'class_accuracy', 'precision', 'recall', 'guidance',
          'temperature')}
      row[scoring]['eval_seconds'] = ev['seconds']
      row[scoring]['best'] = ablations.best_cell(records.get(f'sweep:{arm.name}.{scoring}'))
    rows.append(row)
  return {'studies': {STUDY: {'rows': rows, 'rows_not_run': not_run}},
          'budget_f_steps': budget(config, costs),
          'step_cost_ratios': costs, 'config': ablations.config_key(config)}


def markdown(report_: dict) -> str:
  """DIR/ablations.md for the objective study."""
  cell = ablations.format_value
  c = report_['config']
  swept = any(r[s].get('best') for r in report_['studies'][STUDY]['rows'] for s in SCORINGS)
  lines = ['# The joint-objective study', '', f"Command: `{report_.get('command', '')}`", '',
           f"Budget: {report_['budget_f_steps']:.0f} F-step units (the config's two-stage run: "
           f"F {c['schedule']['forward_steps']} + G {c['schedule']['reverse_steps']} steps); "
           + (f"step costs copied from {report_['step_costs_copied_from']}"
            if report_.get('step_costs_copied_from') else 'step costs measured here')
           + ', relative to an F step: '
           + ', '.join(f'{k} {v:.2f}' for k, v in report_['step_cost_ratios'].items())
           + f". Batch {c['batch_size']}, seed {c['seed']}, {c['eval']['num_samples']} samples "
           'per evaluation.', '',
           '| row | phases (steps) | budget used | unguided: FD / acc. / P / R | guided: w, '
           'FD / acc. / P / R | train s | eval s |' + (
               ' unguided, best of the sweep | guided, best of the sweep |' if swept else ''),
           '|' + '---|' * (9 if swept else 7)]
  for r in report_['studies'][STUDY]['rows']:
    cells = []
    for scoring in SCORINGS:
      e = r[scoring]
      text = ' / '.join(cell(e[k], s) for k, s in (('frechet_distance', '.1f'),
                        ('class_accuracy', '.3f'), ('precision', '.2f'), ('recall', '.2f')))
      cells.append(text if scoring == 'unguided' else f"{cell(e['guidance'], 'g')}, {text}")
    lines.append(f"| {r['label']} | {r['phases']} | {r['budget_used']:.0f} | {cells[0]} | "
                 f"{cells[1]} | {r['training_seconds']:.0f} | "
                 f"{r['unguided']['eval_seconds'] + r['guided']['eval_seconds']:.0f} |" + (
                     ''.join(f" {ablations.format_best(r[s].get('best'))} |" for s in SCORINGS)
                     if swept else ''))
  lines += ['', "Train s of a two-stage row includes the shared F's seconds. Rows are defined "
            'in docs/experiments/objective.md.']
  if swept:
    lines += ['', "Best of the sweep: the best cell by FD of `tools/sweep`'s search around the "
              "scoring's cell (w, t -> FD / class acc. / recall; cells scored, and whether FD "
              'stopped improving at the grid\'s edges); the unguided search keeps w = 0.']
  not_run = report_['studies'][STUDY].get('rows_not_run', [])
  if not_run:
    lines += ['', f"Rows not run yet (or not finished): {', '.join(not_run)}; "
                  '`--rows=` with their names and the same --workdir runs them.']
  if 'wall_seconds_this_call' in report_:
    lines += ['', f"Wall time of this call: {report_['wall_seconds_this_call']:.0f} s "
                  f"({len(report_.get('jobs_run', []))} jobs run, the rest already done)."]
  return '\n'.join(lines) + '\n'
