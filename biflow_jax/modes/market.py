"""The modes of a market config (`config.data.source='market'`), picked by `main.py`.

    train       F, then G (the config's phase plan) on market windows; each phase's wall
                time, steps/s and the machine's load -> DIR/market_train.json
    sample      scenarios (n, days, assets) of raw log returns -> DIR/samples/*.npz
    eval        phase 1's report for G, F's exact inverse, baselines -> DIR/market_eval/
    stress      tail_noise, condition, importance, reverse, backtest -> DIR/stress/
    likelihood  per-window NLL and percentile of a prices/returns CSV -> DIR/likelihood/

`mode(name)` returns the function for a mode name, or raises ValueError naming the
modes a market config has (the image modes edit, export and bench do not apply).
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections

from biflow_jax.data import market_source
from biflow_jax.modes import (market_eval, market_likelihood, market_run, market_sample,
                              stress)
from biflow_jax.objective import phases
from biflow_jax.runtime import files
from biflow_jax.training import checkpoints, train as train_lib

Mode = Callable[[ml_collections.ConfigDict, str], Any]


def is_market(config: ml_collections.ConfigDict) -> bool:
  return config.data.source == 'market'


def _cpu_seconds() -> float:
  """User + system CPU seconds this process has used (every thread)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
          stop_at: int | None = None) -> Path:
  """Trains phase by phase (each a resumable `train_and_evaluate` up to its last step),
  timing each; writes DIR/market_train.json and returns its path.

  Wall times include each phase's compilation and its periodic held-out scoring; steps/s
  is steps over that wall time. The load average says how busy the machine was.
  """
  market_source.load(config)  # a config that does not fit its data fails before anything
  plan = phases.build_phase_plan(config)
  workdir = Path(workdir)
  path = workdir / 'market_train.json'
  record = files.read_json(path) or {'phases': []}
  end = 0
  last = phases.total_steps(plan) if stop_at is None else min(stop_at, phases.total_steps(plan))
  for phase in plan:
    start, end = end, end + phase.steps
    if start >= last:
      break
    before = max(checkpoints.complete_steps(workdir / 'checkpoints') or [0])
    if before >= min(end, last):
      continue  # this phase is done (a resumed run)
    load_before = market_run.load_average()
    cpu_before = _cpu_seconds()
    began = time.perf_counter()
    state = train_lib.train_and_evaluate(config, workdir, stop_at=min(end, last))
    seconds = time.perf_counter() - began
    cpu = _cpu_seconds() - cpu_before
    done = int(state.step) - max(start, before)
    record['phases'].append({'phase': phase.name, 'first_step': start, 'last_step': int(state.step),
                             'steps_this_invocation': done, 'wall_s': round(seconds, 1),
                             'steps_per_s_incl_compile': done / seconds if seconds > 0 else 0.0,
                             # CPU time of this process (all its threads): on an otherwise idle
                             # machine with c cores the wall time is at least cpu_s / c.
                             'cpu_s': round(cpu, 1),
                             'load_before': load_before, 'load_after': market_run.load_average()})
  record['total_wall_s'] = round(sum(p['wall_s'] for p in record['phases']), 1)
  return market_run.write_json(path, record)


MODES: dict[str, Mode] = {
    'train': train,
    'sample': market_sample.run,
    'eval': market_eval.run,
    'stress': stress.run,
    'likelihood': market_likelihood.run,
}


def mode(name: str, stop_at: int | None = None) -> Mode:
  """The market function of a mode (train with `stop_at`); ValueError for other modes."""
  if name not in MODES:
    raise ValueError(f'--mode={name} is not available for a market config '
                     f"(config.data.source='market'); its modes are {sorted(MODES)}")
  if name == 'train':
    return lambda config, workdir: train(config, workdir, stop_at)
  return MODES[name]


def stress_needs_market(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`--mode=stress` of an image config: one clear error."""
  del workdir
  raise ValueError(f"--mode=stress needs a market config (config.data.source='market', e.g. "
                   f'configs/market_sp500.py); this one has config.data.source='
                   f'{config.data.source!r}')
