"""Evaluation outputs go through etils.epath, as training's do: a gs:// workdir works.

gs:// is simulated with epath's own mock backend, mapped onto a local folder (no network);
the code under test sees `gs://bucket/...` paths throughout.
"""
import json
import os
from unittest import mock

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath, testing

from biflow_jax.evaluation import cache, npz_stream
from biflow_jax.runtime import files


@pytest.fixture
def bucket(tmp_path):
  """`gs://bucket` backed by tmp_path/bucket; yields (gs path, local folder)."""
  local = tmp_path / 'bucket'
  local.mkdir()
  seen = []

  def to_local(path):
    s = os.fspath(path)
    seen.append(s)
    return str(local) + s[len('gs://bucket'):] if s.startswith('gs://bucket') else s

  def one(original, path, *args, **kwargs):
    return original(to_local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(to_local(path), to_local(dst), *args, **kwargs)

  fns = {name: one for name in ('open', 'exists', 'isdir', 'listdir', 'makedirs', 'mkdir',
                                'remove', 'rmtree', 'stat', 'glob')}
  fns.update(rename=two, replace=two, copy=two)
  # This etils picks its TensorFlow backend for gs:// whenever TF is installed, past the mock.
  with testing.mock_epath(**fns), mock.patch.object(gpath, '_is_tf_installed', lambda: False):
    yield epath.Path('gs://bucket/run'), local / 'run'
  assert any(s.startswith('gs://bucket/') for s in seen)  # the mock was really used


def test_eval_cache_on_gs(bucket):
  gs, local = bucket
  compute = lambda: ({'x': np.arange(3.0)}, {'n': 3})  # noqa: E731
  _, first = cache.load_or_compute(gs / 'eval_cache', 'real', {'a': 1}, compute)
  arrays, again = cache.load_or_compute(gs / 'eval_cache', 'real', {'a': 1},
                                        lambda: pytest.fail('must reuse the entry'))
  _, changed = cache.load_or_compute(gs / 'eval_cache', 'real', {'a': 2}, compute)
  assert first['recomputed'] and not again['recomputed'] and changed['recomputed']
  assert first['file'].startswith('gs://bucket/run/eval_cache/real-')
  np.testing.assert_array_equal(arrays['x'], np.arange(3.0))
  assert 'a: 1 -> 2' in changed['reason']
  assert len(list((local / 'eval_cache').glob('real-*.npz'))) == 2
  assert not list((local / 'eval_cache').glob('.*'))  # no temporary files left


def test_samples_npz_and_json_on_gs(bucket):
  gs, local = bucket
  rows = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  with npz_stream.NpzWriter(gs / 'eval_samples' / 'x.npz', rows.shape, np.uint8) as w:
    w.append(rows[:1])
    w.append(rows[1:])
    w.extra['arr_1'] = np.arange(2)
  with np.load(local / 'eval_samples' / 'x.npz') as data:
    np.testing.assert_array_equal(data['arr_0'], rows)
    np.testing.assert_array_equal(data['arr_1'], np.arange(2))
  files.write_text_atomic(gs / 'eval.json', json.dumps({'fid': 1.5}))
  assert json.loads((local / 'eval.json').read_text()) == {'fid': 1.5}
  assert files.read_json(gs / 'eval.json') == {'fid': 1.5}
