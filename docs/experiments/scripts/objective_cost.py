"""Per-step cost of each phase an `objective` study row (issue 29) would train, at the MNIST
default's size: the phases alternate, R rounds of 10 steps each; median CPU ms per step."""
import sys, time, resource
import jax, numpy as np
import importlib.util
from biflow_jax.training.experiment import build_experiment
from biflow_jax.data import input_pipeline
ROOT = __import__('pathlib').Path(__file__).resolve().parents[3]  # the repository
spec = importlib.util.spec_from_file_location('cfg', str(ROOT / 'configs' / 'mnist.py')); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)

IM = {'objective.reverse_target': 'inverse_matching'}
PROG = {'schedule.plan': 'progressive', 'schedule.joint_steps': 100}
VARIANTS = {  # name -> (overrides, phase name)
  'F (NLL only)': ({}, 'forward'),
  'G align (the default G step)': ({}, 'reverse'),
  'G inverse matching': (IM, 'reverse'),
  'joint: NLL + align': (PROG, 'joint'),
  'joint: NLL + inverse matching': ({**PROG, **IM}, 'joint'),
  'joint: NLL + align + prior rows 0.25': ({**PROG, 'objective.prior_fraction': 0.25}, 'joint'),
}
def cfg_with(over):
  c = m.get_config()
  for k, v in over.items():
    node = c
    *ps, last = k.split('.')
    for p in ps: node = node[p]
    node[last] = v
  return c
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
runs = {}
for name, (over, phase_name) in VARIANTS.items():
  c = cfg_with(over)
  exp = build_experiment(c)
  state = exp.create_state()
  it = input_pipeline.create_train_iterator(c, rows=exp.process_rows())
  phase = [p for p in exp.plan if p.name == phase_name][0]
  batch = exp.global_batch(next(it))
  t0 = time.perf_counter()
  state, met = exp.step(state, batch, exp.frozen_params, phase); jax.block_until_ready(met)
  print(f'{name}: compiled in {time.perf_counter() - t0:.0f} s', flush=True)
  runs[name] = (exp, state, batch, phase)
res = {k: [] for k in VARIANTS}
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
  for name, (exp, state, batch, phase) in runs.items():
    c0 = cpu()
    for _ in range(10):
      state, met = exp.step(state, batch, exp.frozen_params, phase)
    jax.block_until_ready(met)
    res[name].append((cpu() - c0) / 10)
    runs[name] = (exp, state, batch, phase)
base = np.median(res['F (NLL only)'])
for k, v in res.items():
  print(f"| {k} | {np.median(v)*1000:.0f} | {np.median(v)/base:.2f} |")
