"""Train-step memory per device over configs x device counts x remat on/off, in one run.

  python -m biflow_jax.tools.memory_table --configs=configs/imagenet256.py,configs/imagenet256.py:XL \
      --devices=1,8,64 --batch_size=256 --out=DIR

Each cell runs in a child process with XLA_FLAGS=--xla_force_host_platform_device_count=N
(the device count is fixed when a process starts jax), builds the config's experiment
abstractly (frozen nets as ShapeDtypeStructs: no weight files) on the config's own mesh
over N CPU devices, and compiles each phase's sharded train step
(`step_cost.step_memory`). Remat 'on' is the config's own setting; 'off' is
model.remat = reverse.remat = 'none'. A cell that fails or outlives --timeout_s is
recorded as not measured, with the reason, and the table goes on.

The numbers are XLA:CPU's buffer assignment of the same sharded program: an estimate of a
chip's needs (a TPU or GPU compiler fuses and lays out bf16 differently), not a device
measurement. DIR gets memory.json (every cell, bytes) and memory.md (the table, GiB).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

from biflow_jax.runtime import cli, files
from biflow_jax.tools import step_cost
from biflow_jax.training.experiment import build_experiment

# Nominal memory per chip in bytes (decimal GB, as the vendors state it); a cell 'fits'
# when every phase's live total is at most this (no allowance for the runtime's own use).
CHIPS = {'TPU v5p (95 GB)': 95e9, 'H200 (141 GB)': 141e9}
REMAT_OFF = ('--config.model.remat=none', '--config.reverse.remat=none')
_MARK = 'MEMORY_TABLE_CELL '  # prefixes the child's one line of JSON in its stdout
GIB = 2 ** 30


def cell_command(config: str, devices: int, remat: bool, batch_size: int | None,
                 python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
  """(argv, extra environment) of the child process that measures one cell."""
  argv = [python, '-m', 'biflow_jax.tools.memory_table', '--cell', f'--config={config}']
  if batch_size:
    argv.append(f'--config.batch_size={batch_size}')
  if not remat:
    argv += REMAT_OFF
  flags_env = os.environ.get('XLA_FLAGS', '')
  env = {'XLA_FLAGS': f'{flags_env} --xla_force_host_platform_device_count={devices}'.strip(),
         'JAX_PLATFORMS': 'cpu'}
  return argv, env


def run_cell(config: str, devices: int, remat: bool, batch_size: int | None,
             timeout_s: float, cwd: str | None = None) -> dict[str, Any]:
  """One cell: the child's per-phase memory (bytes) and compile seconds, or why not measured."""
  argv, env = cell_command(config, devices, remat, batch_size)
  row: dict[str, Any] = {'config': config, 'devices': devices, 'remat': remat,
                         'batch_size': batch_size}
  start = time.perf_counter()
  try:
    done = subprocess.run(argv, env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    row['wall_s'] = time.perf_counter() - start
    row['not_measured'] = f'compile took longer than {timeout_s:g} s (stopped)'
    return row
  row['wall_s'] = time.perf_counter() - start
  lines = [l for l in done.stdout.splitlines() if l.startswith(_MARK)]
  if done.returncode != 0 or not lines:
    # -9: the kernel's OOM killer (or a kill); the last stderr line usually names the error.
    last = (done.stderr.strip().splitlines() or ['(no output)'])[-1][:300]
    reason = ('killed (signal 9: out of host memory?)' if done.returncode == -9
              else f'exit status {done.returncode}: {last}')
    row['not_measured'] = reason
    return row
  row.update(json.loads(lines[-1][len(_MARK):]))
  return row


def fits(row: dict) -> dict[str, bool] | None:
  """Per chip: does every phase's live total fit its nominal memory? None if not measured."""
  if 'memory_bytes' not in row or any(m is None for m in row['memory_bytes'].values()):
    return None
  peak = max(m['total'] for m in row['memory_bytes'].values())
  return {chip: peak <= capacity for chip, capacity in CHIPS.items()}


CAPTION = (
    "Train-step memory per device in GiB (XLA's memory analysis: arguments, outputs, "
    'temporaries; total = arguments + outputs + temporaries - donated). These are '
    "XLA:CPU's buffer assignment of the same sharded program (same mesh and shardings, "
    '--xla_force_host_platform_device_count devices): an estimate, not a device measurement; '
    'a TPU or GPU compiler fuses and lays out bf16 differently. The chip columns hold each '
    "phase's total against the chip's nominal memory in decimal GB (95 GB = 88.5 GiB, "
    "141 GB = 131.3 GiB), with no allowance for the runtime's own use; a config fits a chip "
    'when both of its phases do.')


def markdown(rows: Sequence[dict]) -> str:
  """The table: one line per cell and phase."""
  head = ['config', 'devices', 'remat', 'phase', 'argument', 'output', 'temp', 'total',
          *CHIPS, 'compile s']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in rows:
    cell = [row['config'], str(row['devices']), 'on' if row['remat'] else 'off']
    if 'not_measured' in row:
      lines.append('| ' + ' | '.join(cell + ['-', f"not measured: {row['not_measured']}"]
                                     + [''] * (len(head) - 5)) + ' |')
      continue
    for phase, memory in row['memory_bytes'].items():
      if memory is None:
        values, marks = ['n/a'] * 4, ['n/a'] * len(CHIPS)
      else:
        values = [f"{memory[k] / GIB:.2f}" for k in ('argument', 'output', 'temp', 'total')]
        marks = ['yes' if memory['total'] <= capacity else 'no' for capacity in CHIPS.values()]
      lines.append('| ' + ' | '.join(cell + [phase] + values + marks
                                     + [f"{row['compile_s'][phase]:.0f}"]) + ' |')
  return '\n'.join([CAPTION, '', *lines])


def measure_cell(config) -> dict[str, Any]:
  """In the child: this process's devices, the config's mesh, each phase's memory."""
  exp = build_experiment(config, abstract=True)
  timings: dict[str, float] = {}
  memory = step_cost.step_memory(exp, timings)
  return {'mesh': dict(exp.mesh.shape), 'param_sharding': str(config.mesh.param_sharding),
          'remat_setting': {'model': str(config.model.remat),
                            'reverse': str(config.reverse.remat)},
          'memory_bytes': memory, 'compile_s': timings}


def main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Config of one cell (with --cell).',
                                  lock_config=True)
  flags.DEFINE_bool('cell', False, 'Measure one cell in this process (the parent runs these).')
  flags.DEFINE_list('configs', [], 'Config specs (file[:arg]), one table block each.')
  flags.DEFINE_list('devices', ['1', '8', '64'], 'Device counts.')
  flags.DEFINE_list('remat', ['on', 'off'], "on: the config's remat; off: remat 'none'.")
  flags.DEFINE_integer('batch_size', 0, 'Global batch for every cell (0: the config\'s own).')
  flags.DEFINE_float('timeout_s', 600, 'A cell still compiling after this is not measured.')
  flags.DEFINE_string('out', '', 'Directory for memory.json and memory.md.')

  def run(_):
    f = flags.FLAGS
    if f.cell:
      print(_MARK + json.dumps(measure_cell(f.config)), flush=True)
      return
    if not f.configs or not f.out:
      raise app.UsageError('--configs and --out are required (or --cell with --config)')
    bad = [r for r in f.remat if r not in ('on', 'off')]
    if bad:
      raise app.UsageError(f'--remat={",".join(f.remat)}: use on and/or off')
    out = Path(f.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in f.configs:
      for devices in (int(d) for d in f.devices):
        for remat in f.remat:
          row = run_cell(config, devices, remat == 'on', f.batch_size or None, f.timeout_s)
          rows.append(row)
          print(f"{config} devices={devices} remat={remat}: "
                f"{row.get('not_measured') or 'measured'} ({row['wall_s']:.0f} s)", flush=True)
          # Written after every cell, so an interrupted run keeps what it measured.
          (out / 'memory.json').write_text(files.json_text(rows, 'memory.json'))
          (out / 'memory.md').write_text(markdown(rows) + '\n')
    print(markdown(rows))

  app.run(run, argv=argv or sys.argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
