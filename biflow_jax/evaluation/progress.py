"""Progress and ETA of a long evaluation loop (FID-50K takes a while): one log line every
`every_seconds` and one at the end."""
from __future__ import annotations

import time
from typing import Callable

from absl import logging


def format_seconds(seconds: float) -> str:
  """3725 -> '1h02m05s', 65 -> '1m05s', 4.2 -> '4s'."""
  seconds = max(0, int(round(seconds)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f'{h}h{m:02d}m{s:02d}s'
  return f'{m}m{s:02d}s' if m else f'{s}s'


class Progress:
  """Counts items of a known total and logs rate, elapsed time and ETA.

  `update(n)` adds n items; a line is logged when `every_seconds` have passed since the
  last one, and always when the total is reached. `clock` is injectable for tests.
  """

  def __init__(self, what: str, total: int, every_seconds: float = 30.0,
               clock: Callable[[], float] = time.monotonic, log: Callable[..., None] = logging.info):
    if total < 0:
      raise ValueError(f'total must be non-negative, got {total}')
    self.what, self.total, self.every = what, int(total), float(every_seconds)
    self._clock, self._log = clock, log
    self.start = self._last = clock()
    self.done = 0
    self.lines: list[str] = []

  def line(self) -> str:
    """'<what>: done/total (pct), rate/s, elapsed E, ETA T'."""
    elapsed = self._clock() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    left = (self.total - self.done) / rate if rate > 0 else float('inf')
    pct = 100.0 * self.done / self.total if self.total else 100.0
    eta = format_seconds(left) if left != float('inf') else '?'
    return (f'{self.what}: {self.done:,}/{self.total:,} ({pct:.0f}%), {rate:.1f}/s, '
            f'elapsed {format_seconds(elapsed)}, ETA {eta}')

  def update(self, n: int) -> None:
    self.done += int(n)
    now = self._clock()
    if self.done >= self.total or now - self._last >= self.every:
      self._last = now
      text = self.line()
      self.lines.append(text)
      self._log('%s', text)

  def seconds(self) -> float:
    return self._clock() - self.start
