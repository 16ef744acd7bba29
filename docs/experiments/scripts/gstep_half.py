"""CPU time per G step of configs/mnist.py at batch 64 and at reverse_batch_size 32, alternating
(docs/experiments/mnist.md, E12). Usage: gstep_half.py ROUNDS."""
import sys, time, resource
import jax, numpy as np
from biflow_jax.training.experiment import build_experiment
from biflow_jax.data import input_pipeline
import importlib.util
ROOT = __import__('pathlib').Path(__file__).resolve().parents[3]  # the repository
spec = importlib.util.spec_from_file_location('cfg', str(ROOT / 'configs' / 'mnist.py')); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)

VARIANTS = {
  'half_batch': {'schedule.reverse_batch_size': 32},
  'default': {},
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
for name, over in VARIANTS.items():
  c = cfg_with(over)
  exp = build_experiment(c)
  state = exp.create_state()
  it = input_pipeline.create_train_iterator(c, rows=exp.process_rows())
  phase = [p for p in exp.plan if p.name == 'reverse'][0]
  batch = exp.global_batch(next(it))
  state, met = exp.step(state, batch, exp.frozen_params, phase); jax.block_until_ready(met)
  runs[name] = (exp, state, batch, phase)
res = {k: {'cpu': [], 'wall': []} for k in VARIANTS}
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
  for name, (exp, state, batch, phase) in runs.items():
    c0, w0 = cpu(), time.perf_counter()
    for _ in range(10):
      state, met = exp.step(state, batch, exp.frozen_params, phase)
    jax.block_until_ready(met)
    res[name]['cpu'].append((cpu() - c0) / 10); res[name]['wall'].append((time.perf_counter() - w0) / 10)
    runs[name] = (exp, state, batch, phase)
for k, v in res.items():
  print(f"{k:12s} cpu/step {np.median(v['cpu'])*1000:7.1f} ms  wall/step {np.median(v['wall'])*1000:7.1f} ms")
raise SystemExit
c = m.get_config(); exp = build_experiment(c); state = exp.create_state()
it = input_pipeline.create_train_iterator(c, rows=exp.process_rows()); batch = exp.global_batch(next(it))
phase = exp.plan[0]
state, met = exp.step(state, batch, exp.frozen_params, phase); jax.block_until_ready(met)
cs, ws = [], []
for rnd in range(3):
  c0, w0 = cpu(), time.perf_counter()
  for _ in range(10): state, met = exp.step(state, batch, exp.frozen_params, phase)
  jax.block_until_ready(met); cs.append((cpu()-c0)/10); ws.append((time.perf_counter()-w0)/10)
print(f"{'F step':12s} cpu/step {np.median(cs)*1000:7.1f} ms  wall/step {np.median(ws)*1000:7.1f} ms")
