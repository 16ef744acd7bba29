"""What a run prints: its own lines on the console, everything else in a log file.

`setup(workdir)` (called by the entry point) routes Python logging so that
- the console (stderr) shows this package's INFO lines and every library's warnings
  and errors, in a short `HH:MM:SS message` format;
- `DIR/logs/full_process_<i>.log` gets every record, libraries' INFO lines (orbax,
  etils, grain, jax, clu) included, in absl's full format.

The training loop's lines come from `train_line` and `metrics_line`: one line per
log interval (step, phase, loss terms, steps/s, ETA) and one per held-out evaluation.
"""
from __future__ import annotations

import datetime
import logging as std_logging
import math
import os
from pathlib import Path

from absl import logging

PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + os.sep  # biflow_jax/
LOG_DIR = 'logs'

# Metrics that are bookkeeping, not loss terms: shown at the end of a train line (or not).
_TRAILING = ('grad_norm', 'lr', 'skipped')
_HIDDEN = ('steps_per_sec',)


def log_file(workdir: str | os.PathLike, process_index: int = 0) -> Path:
  """Where `setup` writes the full log of process `process_index`."""
  return Path(workdir) / LOG_DIR / f'full_process_{process_index}.log'


def _from_this_package(record: std_logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(PACKAGE_DIR)


class ConsoleFilter(std_logging.Filter):
  """Passes warnings and errors from anywhere, and INFO lines of this package only.

  A record logged with `extra={'file_only': True}` (the config dump) stays off the console.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if getattr(record, 'file_only', False):
      return False
    return record.levelno >= std_logging.WARNING or _from_this_package(record)


class _ShortFormatter(std_logging.Formatter):
  """`12:03:04 message`; a level word in front of anything above INFO."""

  def format(self, record: std_logging.LogRecord) -> str:
    when = datetime.datetime.fromtimestamp(record.created).strftime('%H:%M:%S')
    level = '' if record.levelno <= std_logging.INFO else f'{record.levelname} '
    text = f'{when} {level}{record.getMessage()}'
    if record.exc_info:
      text += '\n' + self.formatException(record.exc_info)
    return text


def setup(workdir: str | os.PathLike | None, process_index: int = 0) -> Path | None:
  """Routes logging as the module docstring says; returns the log file (None without a workdir).

  Idempotent: a second call (tests, several modes in one process) replaces the first's
  file handler instead of adding another.
  """
  absl_handler = logging.get_absl_handler()
  if not any(isinstance(f, ConsoleFilter) for f in absl_handler.filters):
    absl_handler.addFilter(ConsoleFilter())
  absl_handler.setFormatter(_ShortFormatter())
  root = std_logging.getLogger()
  for handler in list(root.handlers):
    if getattr(handler, '_biflow_full_log', False):
      root.removeHandler(handler)
      handler.close()
  if workdir is None or str(workdir).startswith('gs://'):
    return None  # the full log is a local file; on a bucket the console is all there is
  path = log_file(workdir, process_index)
  path.parent.mkdir(parents=True, exist_ok=True)
  handler = std_logging.FileHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  handler._biflow_full_log = True  # pylint: disable=protected-access
  root.addHandler(handler)
  return path


def file_only(message: str, *args) -> None:
  """An INFO line for the full log file only (e.g. the whole config)."""
  logging.info(message, *args, extra={'file_only': True})


def _number(value: float) -> str:
  if isinstance(value, (int,)) or (isinstance(value, float) and value.is_integer()
                                   and abs(value) < 1e6):
    return str(int(value))
  return f'{value:.4g}'


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}'


def format_metrics(metrics: dict[str, float]) -> str:
  """`name value` pairs, loss terms first (sorted), then grad norms, learning rates, skips."""
  def order(key):
    return (any(key.startswith(t) for t in _TRAILING), key)
  keys = sorted((k for k in metrics if k not in _HIDDEN), key=order)
  return '  '.join(f'{k} {_number(float(metrics[k]))}' for k in keys)


def train_line(step: int, total: int, phase: str, metrics: dict[str, float],
               steps_per_sec: float) -> str:
  """One console line per log interval, e.g.
  `step 20/30 forward | loss 0.9998  nll_per_dim 0.9998 ... | 59.0 steps/s | ETA 0:00:00`.
  """
  eta = (total - step) / steps_per_sec if steps_per_sec > 0 else float('inf')
  return (f'step {step}/{total} {phase} | {format_metrics(metrics)} | '
          f'{steps_per_sec:.3g} steps/s | ETA {_duration(eta)}')


def metrics_line(step: int, what: str, metrics: dict[str, float]) -> str:
  """One console line for an evaluation, e.g. `step 30 held-out | bits_per_dim 8.294`."""
  return f'step {step} {what} | {format_metrics(metrics)}'
