"""CPU time per train step of configs/mnist.py under sets of overrides, alternating, so the
ratios are fair on a shared machine (docs/experiments/mnist.md, E12; objective.md).

    python docs/experiments/scripts/step_cost_by_variant.py SET ROUNDS

SET: `half_batch` (G's step at batch 64 and at reverse_batch_size 32), `cfg_fraction` (G's
step with training-time CFG on every row, half or a quarter of them) or `objective` (the
phases the joint-objective study's rows train). Each variant's phase is compiled with one
step, then the variants alternate, ROUNDS rounds of 10 steps each. Prints one Markdown row
per variant: median CPU ms per step (all of XLA's threads) and the ratio to the first.
"""
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np

from biflow_jax.data import input_pipeline
from biflow_jax.tools.step_time_ab import load_config
from biflow_jax.training.experiment import build_experiment

MNIST = str(Path(__file__).resolve().parents[3] / 'configs' / 'mnist.py')
IM = {'objective.reverse_target': 'inverse_matching'}
PROG = {'schedule.plan': 'progressive', 'schedule.joint_steps': 100}
SETS = {  # set -> {variant: (overrides of configs/mnist.py, the phase timed)}
    'cfg_fraction': {
        'G, CFG on every row (the default)': ({}, 'reverse'),
        'G, CFG on half the rows': ({'objective.cfg_guided_fraction': 0.5}, 'reverse'),
        'G, CFG on a quarter of the rows': ({'objective.cfg_guided_fraction': 0.25}, 'reverse'),
    },
    'half_batch': {
        'G, batch 64 (the default)': ({}, 'reverse'),
        'G, reverse_batch_size 32': ({'schedule.reverse_batch_size': 32}, 'reverse'),
    },
    'objective': {
        'F (NLL only)': ({}, 'forward'),
        'G align (the default G step)': ({}, 'reverse'),
        'G inverse matching': (IM, 'reverse'),
        'joint: NLL + align': (PROG, 'joint'),
        'joint: NLL + inverse matching': ({**PROG, **IM}, 'joint'),
        'joint: NLL + align + prior rows 0.25': (
            {**PROG, 'objective.prior_fraction': 0.25}, 'joint'),
    },
}


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def compiled_step(overrides: dict, phase_name: str):
  config = load_config(MNIST)
  config.update_from_flattened_dict(overrides)
  exp = build_experiment(config)
  state = exp.create_state()
  phase = next(p for p in exp.plan if p.name == phase_name)
  batch = exp.global_batch(next(input_pipeline.create_train_iterator(
      config, rows=exp.process_rows())))
  state, metrics = exp.step(state, batch, exp.frozen_params, phase)
  jax.block_until_ready(metrics)
  return exp, state, batch, phase


def main(set_name: str, rounds: int) -> None:
  runs = {}
  for name, (overrides, phase_name) in SETS[set_name].items():
    t0 = time.perf_counter()
    runs[name] = compiled_step(overrides, phase_name)
    print(f'{name}: compiled in {time.perf_counter() - t0:.0f} s', flush=True)
  per_step = {name: [] for name in runs}
  for _ in range(rounds):
    for name, (exp, state, batch, phase) in runs.items():
      c0 = cpu_seconds()
      for _ in range(10):
        state, metrics = exp.step(state, batch, exp.frozen_params, phase)
      jax.block_until_ready(metrics)
      per_step[name].append((cpu_seconds() - c0) / 10)
      runs[name] = (exp, state, batch, phase)
  base = np.median(next(iter(per_step.values())))
  for name, seconds in per_step.items():
    print(f'| {name} | {np.median(seconds) * 1000:.0f} | {np.median(seconds) / base:.2f} |')


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
