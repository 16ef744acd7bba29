"""CPU time per train step of configs/mnist.py under sets of overrides, alternating, so the
ratios are fair on a shared machine (docs/experiments/mnist.md, E12; objective.md).

    python docs/experiments/scripts/step_cost_by_variant.py SET ROUNDS

SET: `half_batch` (G's step at batch 64 and at reverse_batch_size 32), `optimizer` (G's step
with AdamW and with Muon, `optim.reverse.algorithm`), `cfg_fraction` (G's
step with training-time CFG on every row, half or a quarter of them) or `objective` (the
phases the joint-objective study's rows train). Each variant's phase is compiled with one
step, then the variants alternate, ROUNDS rounds of 10 steps each. Prints one Markdown row
per variant: median CPU ms per step (all of XLA's threads) and the ratio to the first.
The timing is `objective_study.alternating_step_seconds` with a CPU-time clock, on a fixed
random batch.
"""
import resource
import sys
from pathlib import Path

from biflow_jax.tools.objective_study import alternating_step_seconds
from biflow_jax.tools.step_time_ab import load_config

MNIST = str(Path(__file__).resolve().parents[3] / 'configs' / 'mnist.py')
IM = {'objective.reverse_target': 'inverse_matching'}
PROG = {'schedule.plan': 'progressive', 'schedule.joint_steps': 100}
SETS = {  # set -> {variant: (overrides of configs/mnist.py, the phase timed)}
    # Each variant names its own value, so a set keeps timing what its labels say when
    # configs/mnist.py's default moves (it did for both of these).
    'cfg_fraction': {
        'G, CFG on every row': ({'objective.cfg_guided_fraction': 1.0}, 'reverse'),
        'G, CFG on half the rows': ({'objective.cfg_guided_fraction': 0.5}, 'reverse'),
        'G, CFG on a quarter of the rows': ({'objective.cfg_guided_fraction': 0.25}, 'reverse'),
    },
    'optimizer': {
        'G, AdamW': ({'optim.reverse.algorithm': 'adamw'}, 'reverse'),
        'G, Muon': ({'optim.reverse.algorithm': 'muon'}, 'reverse'),
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


def variant(overrides: dict, phase_name: str):
  config = load_config(MNIST)
  config.update_from_flattened_dict(overrides)
  return config, phase_name


def main(set_name: str, rounds: int) -> None:
  per_step = alternating_step_seconds(
      {name: variant(*spec) for name, spec in SETS[set_name].items()}, rounds, 10,
      clock=cpu_seconds)
  base = next(iter(per_step.values()))
  for name, seconds in per_step.items():
    print(f'| {name} | {seconds * 1000:.0f} | {seconds / base:.2f} |')


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
