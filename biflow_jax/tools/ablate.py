"""The paper's ablations at small scale, in one command.

    python -m biflow_jax.tools.ablate --config=configs/mnist.py --study=all --workdir=DIR

Studies (`ablations.STUDIES`, or `all`): supervision, denoising, norm_control, distance,
guidance; what each row is lives in `biflow_jax/tools/ablations.py`. `--study=objective`
(alone) is the joint-objective study of `biflow_jax/tools/objective_study.py`: whole runs
(F only, two stages, the progressive plan) at equal wall time, with its own table;
`--rows=a,b` runs some of its rows, in that order, and the table keeps every row finished in
the workdir. Its shared F trains first when an inverse-matching row is asked for: that
step's cost is measured on the trained F before the row is planned. `--costs_from=DIR2`
copies DIR2's measured step costs (the same config, e.g. at another --config.seed) instead
of measuring them, so a second seed runs the first's step counts. `--base=guided` re-runs
supervision, denoising and norm_control on the MNIST default's G (training-time CFG and
perceptual terms kept, rows scored guided) instead of the paper's unguided base
(`ablations.BASES`). Every F setting is trained
once into DIR/forward/<name>/ (the default one is config.model.init_from when that is set),
every G training once into DIR/reverse/<name>/ (plan reverse_only from that F, the config's
reverse_steps, seed and data order), and every evaluation once (`evaluation.evaluate` with
eval.decoders set to the row's decoder) into DIR/evals/<name>.json. `--sweep_cells=N` follows
every evaluation by `tools/sweep`'s search of N cells around its cell (a 3 x 3 grid of w and
t, `ablations.sweep_grid`; t only at w = 0 for an unguided row) into DIR/sweeps/<name>.json,
and the tables add each row's best cell: the same search for every row, from one command.
DIR/ablations.json and DIR/ablations.md hold one table per study.

Resume: a finished training writes DIR/.../ablate_done.json, a finished evaluation its
DIR/evals/<name>.json and a sweep DIR/sweeps/<name>.json, atomically and last, so a killed run
redoes none of them; an interrupted
training resumes from its own checkpoint. A finished run of another config in DIR is an
error (use a new --workdir). Bad studies and configs that cannot run a variant fail before
anything trains.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from biflow_jax.modes import evaluate
from biflow_jax.runtime import cli, files
from biflow_jax.tools import ablations, objective_study, sweep
from biflow_jax.training import train

DONE = ablations.DONE


Job = ablations.Job


def plan(config: ml_collections.ConfigDict, studies: tuple[str, ...],
         workdir: epath.Path, base: str = 'paper') -> list[Job]:
  """Every job of the studies in the order they run: the F runs, then each G training
  followed by the evaluations of its rows (so results arrive as the run goes)."""
  jobs, forward_runs = [], {}
  for f in ablations.forwards(studies):
    if ablations.uses_given_forward(config, f):
      forward_runs[f] = str(config.model.init_from)
      continue
    run = workdir / 'forward' / f
    forward_runs[f] = str(run)
    fc = ablations.forward_config(config, f, base)
    jobs.append(Job('F', f, fc, run, run / DONE, ablations.training_key(fc),
                    float(fc.schedule.forward_steps)))
  evaluations = ablations.evaluations(studies)
  for t in ablations.trainings(studies):
    run = workdir / 'reverse' / t
    forward_run = forward_runs[ablations.TRAININGS[t][0]]
    gc = ablations.reverse_config(config, t, forward_run, base)
    cfg = 2.0 if gc.objective.cfg_w_max > 0 else 1.0  # two passes of G per step
    jobs.append(Job('G', t, gc, run, run / DONE, ablations.training_key(gc),
                    cfg * gc.schedule.reverse_steps))
    for name, row in evaluations.items():
      if row.training == t:
        ec = ablations.eval_config(config, row, forward_run, base)
        jobs.append(Job('eval', name, ec, run, workdir / 'evals' / f'{name}.json',
                        ablations.config_key(ec), 1.0, row))
  return jobs


def finished(job: Job) -> dict | None:
  """The job's record when it is finished with this config; raises ValueError when DIR
  holds a finished (or started) job of another config."""
  record = files.read_json(job.record)
  # An evaluation or a sweep reads a run it did not train: only a training's run is its own.
  trains = job.kind not in ('eval', 'sweep')
  started = files.read_json(job.workdir / 'config.json') if trains else None
  if record is None and started is not None and ablations.training_key_of(started) != job.key:
    raise ValueError(f'{job.workdir} holds a started run of another config; use a new '
                     '--workdir, or delete that directory to retrain it')
  if record is not None and record.get('key') != job.key:
    raise ValueError(f'{job.record} records a finished {job.kind} {job.name!r} of another '
                     'config; use a new --workdir, or delete that file to redo it')
  return record


def run_job(job: Job) -> dict:
  """Trains, evaluates or sweeps; returns the record written (last, atomically)."""
  t0 = time.perf_counter()
  if job.kind == 'eval':
    result = evaluate.run(job.config, job.workdir)
    record = {'entry': result['decoders'][job.row.decoder], 'step': result['step'],
              'eval': result}
  elif job.kind == 'sweep':
    k, out = job.key, job.record.parent / job.name
    result = sweep.sweep(job.config, job.workdir, job.row.decoder, k['cells'], k['w'], k['t'],
                         out, command=f'tools/ablate: the sweep of {job.name}',
                         fix_w=k['fix_w'])
    record = {'best': result['best'], 'converged': result['converged'],
              'stopped': result['stopped'], 'cells_scored': len(result['cells']),
              'start_grid': result['start_grid'], 'step': result['step'],
              'result': str(out / f'sweep_{job.row.decoder}.json')}
  else:
    state = train.train_and_evaluate(job.config, job.workdir)
    record = {'steps': int(state.step), 'workdir': str(job.workdir)}
  record.update(key=job.key, kind=job.kind, name=job.name,
                seconds=round(time.perf_counter() - t0, 2))
  job.record.parent.mkdir(parents=True, exist_ok=True)
  files.write_text_atomic(job.record, files.json_text(record, str(job.record)))
  return record


def eta(jobs: list[Job], records: dict[str, dict]) -> str:
  """Time the unfinished jobs should take at the measured speed of each kind (seconds per
  unit of cost of its finished jobs: per step for trainings, x2 for CFG); a lower bound
  ('>=') while a kind still to run has not been measured."""
  rate = {}
  for kind in ('F', 'G', 'run', 'eval', 'sweep'):
    done = [(records[id_of(j)]['seconds'], j.cost) for j in jobs
            if j.kind == kind and id_of(j) in records]
    if done:
      rate[kind] = sum(s for s, _ in done) / max(sum(c for _, c in done), 1e-9)
  todo = [j for j in jobs if id_of(j) not in records]
  unmeasured = sorted({j.kind for j in todo if j.kind not in rate})
  seconds = sum(rate[j.kind] * j.cost for j in todo if j.kind in rate)
  if not unmeasured:
    return _clock(seconds)
  return f'>= {_clock(seconds)} ({", ".join(unmeasured)} speed not measured yet)'


def id_of(job: Job) -> str:
  return f'{job.kind}:{job.name}'


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s'


def prepare(config: ml_collections.ConfigDict, study: str, workdir: str | epath.PathLike,
            log: Callable[[str], Any] = logging.info, rows: str = 'all', base: str = 'paper',
            costs_from: str = '', sweep_cells: int = 0
            ) -> tuple[tuple[str, ...], list[Job], dict[str, dict]]:
  """(studies, jobs to run, records of the finished ones). Raises ValueError for an unknown
  study or row, a config that cannot run a variant, or a workdir holding jobs of another
  config; nothing is trained. The objective study first measures its step costs
  (DIR/step_costs.json); `rows` (its rows only) picks and orders the rows this call runs,
  while the records cover every row already finished in DIR, so the table grows by parts.
  `base` (ablations.BASES) is what every G of the paper's studies keeps; `costs_from`
  (objective study only) is `objective_study.step_costs`'; `sweep_cells` > 0 follows every
  evaluation by a `tools/sweep` search of that many cells around its cell
  (`ablations.sweep_job`)."""
  if sweep_cells < 0 or 0 < sweep_cells < ablations.SWEEP_GRID_CELLS:
    raise ValueError(f'--sweep_cells={sweep_cells}: give 0 (no sweeps) or at least '
                     f'{ablations.SWEEP_GRID_CELLS}, the starting grid around a guided cell '
                     '(3 w x 3 t), e.g. 14')
  studies = ablations.parse_studies(study)
  if studies == (ablations.OBJECTIVE_STUDY,):
    if base != 'paper':
      raise ValueError(f'--base={base!r} applies to the paper\'s studies, not '
                       f'--study={ablations.OBJECTIVE_STUDY} (whole runs of the config)')
    chosen = objective_study.parse_rows(rows)
    objective_study.check(config)
    costs = objective_study.step_costs(config, epath.Path(workdir), log=log,  # compiles
                                       costs_from=costs_from)
    every = objective_study.plan(config, epath.Path(workdir), costs)
    jobs = objective_study.plan(config, epath.Path(workdir), costs, chosen)
    if objective_study.awaits_trained_costs(workdir, chosen):
      # Inverse matching's step cost depends on F's weights: only the shared F now; `run`
      # prepares again once it has finished, measuring those costs on it.
      jobs = [j for j in jobs if id_of(j) == 'F:default']
  else:
    if rows != 'all' or costs_from:
      flag = f'--rows={rows!r}' if rows != 'all' else f'--costs_from={costs_from}'
      raise ValueError(f'{flag} applies to --study={ablations.OBJECTIVE_STUDY} only')
    ablations.check(config, studies, base)
    jobs = every = plan(config, studies, epath.Path(workdir), base)
  every = ablations.with_sweeps(every, sweep_cells, epath.Path(workdir))
  jobs = ablations.with_sweeps(jobs, sweep_cells, epath.Path(workdir))
  return studies, jobs, {id_of(j): r for j in every if (r := finished(j)) is not None}


def run(config: ml_collections.ConfigDict, study: str, workdir: str | epath.PathLike,
        command: str = '', log: Callable[[str], Any] = logging.info, rows: str = 'all',
        base: str = 'paper', costs_from: str = '', sweep_cells: int = 0) -> dict:
  """Runs (or resumes) the studies named by `study` ('all' or comma-separated) in workdir;
  writes and returns DIR/ablations.json's content (its 'jobs_run' lists what this call did).

  Raises `prepare`'s ValueErrors before anything trains.
  """
  while True:  # twice at most: an objective study's shared F, then its rows (see prepare)
    studies, jobs, records = prepare(config, study, workdir, log, rows, base, costs_from,
                                     sweep_cells)
    again = _prepares_again(studies, workdir, rows)
    report = execute(config, studies, jobs, records, epath.Path(workdir), command, log, base)
    if not again:
      return report


def _prepares_again(studies: tuple[str, ...], workdir, rows: str) -> bool:
  return (studies == (ablations.OBJECTIVE_STUDY,) and
          objective_study.awaits_trained_costs(workdir, objective_study.parse_rows(rows)))


def execute(config, studies, jobs: list[Job], records: dict[str, dict], workdir: epath.Path,
            command: str, log: Callable[[str], Any] = logging.info, base: str = 'paper') -> dict:
  """Runs the unfinished jobs in order, then writes DIR/ablations.json and .md."""
  t0, jobs_run = time.perf_counter(), []
  count = lambda kind: sum(j.kind == kind for j in jobs)
  whole = f", {count('run')} whole" if count('run') else ''
  swept = f", {count('sweep')} sweeps" if count('sweep') else ''
  log(f'ablate: studies {", ".join(studies)}: {len(jobs)} jobs '
      f"({count('F')} F, {count('G')} G{whole} trainings, "
      f"{count('eval')} evaluations{swept}), {len(records)} already done")
  for i, job in enumerate(jobs):
    if id_of(job) in records:
      continue
    log(f'ablate [{i + 1}/{len(jobs)}] {job.kind} {job.name} -> {job.workdir} '
        f'(elapsed {_clock(time.perf_counter() - t0)}, ETA {eta(jobs, records)})')
    records[id_of(job)] = run_job(job)
    jobs_run.append(id_of(job))
  wall = time.perf_counter() - t0
  by_kind = lambda kind: {j.name: records[id_of(j)] for j in jobs if j.kind == kind}
  if studies == (ablations.OBJECTIVE_STUDY,):
    # Read back: a pass that trained the shared F leaves IM's re-measurement to `prepare`.
    costs = objective_study.recorded_costs(workdir)
    report = objective_study.report(config, costs, records)
    report['step_costs_copied_from'] = objective_study.costs_copied_from(workdir)
    to_markdown = objective_study.markdown
  else:
    report = ablations.report(config, studies, by_kind('F'), by_kind('G'), by_kind('eval'), base,
                              by_kind('sweep'))
    to_markdown = ablations.markdown
  report.update(command=command, jobs_run=jobs_run, wall_seconds_this_call=round(wall, 1))
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_text_atomic(workdir / 'ablations.json', files.json_text(report, 'ablations.json'))
  files.write_text_atomic(workdir / 'ablations.md', to_markdown(report))
  log(f'ablate: wrote {workdir / "ablations.md"} and ablations.json ({_clock(wall)} this call)')
  return report


def main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
  flags.DEFINE_string('study', 'all', f"'all' or comma-separated of {', '.join(ablations.STUDIES)}"
                      f"; or '{ablations.OBJECTIVE_STUDY}' alone")
  flags.DEFINE_string('workdir', None, 'Directory of the runs, evaluations and tables.')
  flags.DEFINE_string('rows', 'all', f"--study={ablations.OBJECTIVE_STUDY} only: 'all' or "
                      'comma-separated rows to run now, in that order (the table keeps every '
                      'row finished in --workdir)')
  flags.DEFINE_string('base', 'paper', f"{', '.join(ablations.BASES)}: what every G of the "
                      "paper's studies keeps ('guided': the config's training-time CFG and "
                      'perceptual terms, rows scored at its guided cells; supervision, '
                      'denoising, norm_control only)')
  flags.DEFINE_string('costs_from', '', f"--study={ablations.OBJECTIVE_STUDY} only: another "
                      "study's workdir whose measured step costs to copy (the same config; "
                      'its seed may differ), so both run the same step counts')
  flags.DEFINE_integer('sweep_cells', 0, "0, or follow every evaluation by tools/sweep's "
                       "search of that many cells around the row's cell (w, t); the tables "
                       'then show each row\'s best cell (the same count for every row)')
  flags.mark_flags_as_required(['config', 'workdir'])
  argv = argv or sys.argv

  def go(_):
    command = ' '.join(['python -m biflow_jax.tools.ablate'] + list(argv[1:]))
    config, workdir, rows = flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.rows
    base = flags.FLAGS.base
    again = True
    while again:  # twice at most: an objective study's shared F, then its rows (see prepare)
      try:
        studies, jobs, records = prepare(config, flags.FLAGS.study, workdir, logging.info, rows,
                                         base, flags.FLAGS.costs_from, flags.FLAGS.sweep_cells)
      except ValueError as e:  # bad input: one line, before anything trains
        print(f'FATAL: {e}', file=sys.stderr)
        sys.exit(2)
      again = _prepares_again(studies, workdir, rows)
      execute(config, studies, jobs, records, epath.Path(workdir), command, base=base)

  app.run(go, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
