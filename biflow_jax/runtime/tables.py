"""Text tables and JSON results of the timing tools (`--mode=bench`, `tools/device_bench`,
`tools/compile_time`). Standard library only, so the device benchmark keeps running on
a bare accelerator image."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from biflow_jax.runtime import files


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
  """Rows of cells (the first row the header) as left-aligned ' | ' columns, with a
  '-+-' rule under the header."""
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = [' | '.join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
  lines.insert(1, '-+-'.join('-' * w for w in widths))
  return lines


def report(result: dict[str, Any], format_table: Callable[[dict], str], out: str = '') -> None:
  """Prints `format_table(result)`; writes `result` as JSON to `out` when given."""
  print(format_table(result))
  if out:
    Path(out).write_text(files.json_text(result, out))
