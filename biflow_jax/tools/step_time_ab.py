"""Train-step time of two source trees on one config, alternating, so their ratio is fair.

  python -m biflow_jax.tools.step_time_ab --trees=OLD_TREE,NEW_TREE --config=CONFIG.py \
      --steps=20 --rounds=3 --out=ab.json

Each round runs one child process per tree (order alternating round by round: A B, B A,
...), with that tree as cwd and first on PYTHONPATH, so it imports that tree's biflow_jax.
The child builds the experiment of CONFIG (a file path: the same file for both trees, so
the config is identical), and for each phase of its plan compiles the jitted train step
with one call, then times --steps calls (each to block_until_ready) on a fixed random
batch. Per tree and phase: the median step time over every timed step of every round; the
ratio is tree 2 / tree 1, with each round's paired ratio too. Each step's process CPU
time (all of XLA's threads) is recorded beside its wall time: it counts the work done, so
it moves less than wall time when other jobs take the cores (not at all is too much to
ask: caches and memory bandwidth are shared too). Under a shared, changing CPU
load, alternating the trees within each round gives both the same load on average, which a
run of one tree after the other would not; the 1-minute load average is recorded per child.

The child is this file run by its path (not `-m`), so it uses only what both trees have:
`experiment.build_experiment`, `example_batch`, `Experiment.create_state/global_batch/step`.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from biflow_jax.training import experiment

_MARK = 'STEP_TIME_AB '  # prefixes the child's one line of JSON in its stdout


def load_config(path: str):
  """get_config() of a config file given by path, optionally 'file.py:arg'."""
  file, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('step_time_ab_config', file)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'--config={path}: not a Python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def random_batch(config, seed: int = 0) -> dict:
  """A host batch shaped like `example_batch`, filled with fixed random values."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, value in experiment.example_batch(config).items():
    if key == 'label':
      out[key] = rng.integers(0, max(int(config.model.num_classes), 1), value.shape,
                              dtype=value.dtype)
    elif np.issubdtype(value.dtype, np.integer):
      out[key] = rng.integers(0, 256, value.shape, dtype=value.dtype)
    else:
      out[key] = rng.standard_normal(value.shape).astype(value.dtype)
  return out


def time_phases(config, steps: int) -> dict[str, Any]:
  """In the child: per phase, compile seconds and `steps` step times (seconds)."""
  exp = experiment.build_experiment(config)
  state = exp.create_state()
  batch = exp.global_batch(random_batch(config))
  result: dict[str, Any] = {'package': str(Path(experiment.__file__).resolve().parents[1]),
                            'phases': {}}
  for phase in exp.plan:
    start = time.perf_counter()
    state, metrics = exp.step(state, batch, exp.frozen_params, phase)  # compiles
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(steps):
      start, start_cpu = time.perf_counter(), time.process_time()
      state, metrics = exp.step(state, batch, exp.frozen_params, phase)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
    result['phases'][phase.name] = {'compile_s': compile_s, 'step_s': times, 'cpu_s': cpu}
  return result


def run_child(tree: str, config: str, steps: int, timeout_s: float) -> dict[str, Any]:
  """One child in `tree`; raises RuntimeError with its output tail if it fails."""
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [tree] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])}
  argv = [sys.executable, str(Path(__file__).resolve()), '--child', f'--config={config}',
          f'--steps={steps}']
  load = os.getloadavg()[0]
  start = time.perf_counter()
  done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                        timeout=timeout_s)
  lines = [l for l in done.stdout.splitlines() if l.startswith(_MARK)]
  if done.returncode != 0 or not lines:
    raise RuntimeError(f'child in {tree} failed (status {done.returncode}):\n'
                       f'{done.stderr[-3000:]}')
  result = json.loads(lines[-1][len(_MARK):])
  if Path(result['package']) != Path(tree).resolve():
    raise RuntimeError(f'child in {tree} imported biflow_jax from {result["package"]}')
  result.update(tree=tree, load_1min_at_start=load, wall_s=time.perf_counter() - start)
  return result


def summarise(runs: Sequence[dict], trees: Sequence[str]) -> dict[str, Any]:
  """Per tree and phase: median step ms over all rounds; ratio tree 2 / tree 1 (overall
  and per round, paired)."""
  by_tree = {tree: [r for r in runs if r['tree'] == tree] for tree in trees}
  phases = list(runs[0]['phases'])
  out: dict[str, Any] = {'trees': list(trees), 'phases': {}}
  for phase in phases:
    medians = {tree: 1e3 * statistics.median(
        [t for r in by_tree[tree] for t in r['phases'][phase]['step_s']]) for tree in trees}
    rounds = [1e3 * statistics.median(r['phases'][phase]['step_s']) for r in by_tree[trees[1]]]
    base = [1e3 * statistics.median(r['phases'][phase]['step_s']) for r in by_tree[trees[0]]]
    cpu = {tree: 1e3 * statistics.median(
        [t for r in by_tree[tree] for t in r['phases'][phase].get('cpu_s', [math.nan])])
           for tree in trees}
    out['phases'][phase] = {
        'median_step_ms': medians,
        'ratio': medians[trees[1]] / medians[trees[0]],
        'median_step_cpu_ms': cpu,
        'cpu_ratio': cpu[trees[1]] / cpu[trees[0]],
        'ratio_per_round': [b / a for a, b in zip(base, rounds)],
        'compile_s': {tree: [r['phases'][phase]['compile_s'] for r in by_tree[tree]]
                      for tree in trees}}
  out['load_1min_at_child_start'] = [round(r['load_1min_at_start'], 2) for r in runs]
  return out


def format_summary(summary: dict) -> str:
  a, b = summary['trees']
  lines = [f'tree 1 (A): {a}', f'tree 2 (B): {b}',
           '| phase | A median ms/step | B median ms/step | B/A | B/A per round '
           '| A median CPU ms/step | B median CPU ms/step | B/A (CPU) |',
           '|---|---|---|---|---|---|---|---|']
  for phase, s in summary['phases'].items():
    per_round = ', '.join(f'{r:.3f}' for r in s['ratio_per_round'])
    lines.append(f"| {phase} | {s['median_step_ms'][a]:.1f} | {s['median_step_ms'][b]:.1f} "
                 f"| {s['ratio']:.3f} | {per_round} | {s['median_step_cpu_ms'][a]:.1f} "
                 f"| {s['median_step_cpu_ms'][b]:.1f} | {s['cpu_ratio']:.3f} |")
  lines.append('1-min load average at each child start: '
               + ', '.join(f'{x:g}' for x in summary['load_1min_at_child_start']))
  return '\n'.join(lines)


def main(argv=None) -> None:
  flags.DEFINE_list('trees', [], 'Two source trees (A, B): the ratio is B / A.')
  flags.DEFINE_string('config', None, 'Config file path (file.py or file.py:arg), used by both.')
  flags.DEFINE_integer('steps', 20, 'Timed steps per phase per child (after one compile call).')
  flags.DEFINE_integer('rounds', 3, 'Rounds; each runs both trees, order alternating.')
  flags.DEFINE_float('timeout_s', 1800, 'A child still running after this fails the run.')
  flags.DEFINE_string('out', '', 'Also write every child result and the summary to this JSON.')
  flags.DEFINE_bool('child', False, 'Time this process\'s biflow_jax (the parent runs these).')

  def run(_):
    f = flags.FLAGS
    if not f.config:
      raise app.UsageError('--config is required')
    config_path = str(Path(f.config.partition(':')[0]).resolve())
    if not Path(config_path).is_file():
      raise app.UsageError(f'--config={f.config}: no such file')
    config = config_path + (':' + f.config.partition(':')[2] if ':' in f.config else '')
    if f.child:
      print(_MARK + json.dumps(time_phases(load_config(config), f.steps)), flush=True)
      return
    if len(f.trees) != 2 or not all(Path(t, 'biflow_jax').is_dir() for t in f.trees):
      raise app.UsageError(f'--trees={",".join(f.trees)}: give two source trees, each '
                           'holding a biflow_jax package')
    trees = [str(Path(t).resolve()) for t in f.trees]
    runs = []
    for r in range(f.rounds):
      for tree in (trees if r % 2 == 0 else trees[::-1]):
        runs.append(run_child(tree, config, f.steps, f.timeout_s))
        print(f"round {r + 1}: {tree}: " + ', '.join(
            f"{p} {1e3 * statistics.median(v['step_s']):.1f} ms"
            for p, v in runs[-1]['phases'].items()), flush=True)
        if f.out:  # after every child, so an interrupted run keeps what it measured
          Path(f.out).write_text(json.dumps({'runs': runs}, indent=2))
    summary = summarise(runs, trees)
    print(format_summary(summary))
    if f.out:
      Path(f.out).write_text(json.dumps({'summary': summary, 'runs': runs}, indent=2))

  app.run(run, argv=argv or sys.argv)


if __name__ == '__main__':
  main()
