"""runtime/files.py: strict JSON for every JSON file the project writes (issue 32)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from biflow_jax.runtime import files


def strict_loads(text: str):
  """json.loads that refuses NaN / Infinity, as strict parsers (and other languages) do."""
  def refuse(constant):
    raise ValueError(f'{constant} is not JSON')
  return json.loads(text, parse_constant=refuse)


def test_json_text_writes_non_finite_numbers_as_strings_naming_them(caplog):
  value = {'summary': {'mean': float('nan'), 'n': np.int64(3)},
           'rows': [np.float32(1.5), np.float64('inf'), -float('inf')],
           'array': np.array([[1, 2]]), 'flag': np.bool_(True), 'none': None}
  with caplog.at_level(logging.WARNING):
    text = files.json_text(value, 'x.json')
  back = strict_loads(text)
  assert back == {'summary': {'mean': 'non-finite (nan)', 'n': 3},
                  'rows': [1.5, 'non-finite (inf)', 'non-finite (-inf)'],
                  'array': [[1, 2]], 'flag': True, 'none': None}
  assert 'x.json: 3 non-finite value(s) written as strings: summary.mean, rows[1], rows[2]' in (
      caplog.text)


def test_plain_json_dumps_is_what_strict_parsers_reject():
  """Why: Python's default writes NaN, which strict_loads (like JSON.parse) refuses."""
  with pytest.raises(ValueError, match='NaN is not JSON'):
    strict_loads(json.dumps({'mean': float('nan')}))
