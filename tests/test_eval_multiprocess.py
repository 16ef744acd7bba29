"""Evaluation over several processes: the deal of batches, and 2 gloo processes == 1."""
import json
import math
import shutil
import threading

import numpy as np
import pytest

from biflow_jax.evaluation import shares
from biflow_jax.modes import evaluate
from biflow_jax.training import train
from subprocess_util import launch
from test_train import TINY, parse_config

# ------------------------------------------------------------ the deal, in one process


def fake_processes(monkeypatch, count: int):
  """Threads that stand for `count` processes: process_index per thread, and an allgather
  that stacks every thread's tree (as multihost_utils.process_allgather does)."""
  local = threading.local()
  barrier = threading.Barrier(count)
  slots: list = [None] * count

  def allgather(tree):
    slots[local.index] = tree
    barrier.wait()
    out = {'rows': np.stack([s['rows'] for s in slots]),
           'arrays': {k: np.stack([s['arrays'][k] for s in slots]) for k in tree['arrays']}}
    barrier.wait()  # nobody overwrites a slot before all have read them
    return out

  monkeypatch.setattr(shares.jax, 'process_count', lambda: count)
  monkeypatch.setattr(shares.jax, 'process_index', lambda: local.index)
  monkeypatch.setattr(shares.multihost_utils, 'process_allgather', allgather)

  def run_all(fn):
    results, errors = [None] * count, []

    def body(i):
      local.index = i
      try:
        results[i] = fn(i)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
        barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    if errors:
      raise errors[0]
    return results

  return run_all


@pytest.mark.parametrize('num,batch,count', [(15, 6, 2), (20, 6, 2), (5, 6, 3), (21, 4, 3)])
def test_every_process_sees_every_batch_in_order_and_makes_only_its_own(monkeypatch, num,
                                                                         batch, count):
  rows = np.arange(num)
  made: dict[int, list[int]] = {i: [] for i in range(count)}

  def produce_as(i):
    def produce(j):
      made[i].append(j)
      x = rows[j * batch:(j + 1) * batch]
      return {'x': x.astype(np.float32), 'label': x.astype(np.int32) % 3}
    return produce

  run_all = fake_processes(monkeypatch, count)
  num_batches = math.ceil(num / batch)
  seen = run_all(lambda i: list(shares.in_order(num_batches, produce_as(i), batch)))
  for parts in seen:  # the one-process stream, on every process
    assert [len(p['x']) for p in parts] == [len(rows[j * batch:(j + 1) * batch])
                                            for j in range(num_batches)]
    np.testing.assert_array_equal(np.concatenate([p['x'] for p in parts]), rows)
    np.testing.assert_array_equal(np.concatenate([p['label'] for p in parts]), rows % 3)
  for i in range(count):
    owned = list(range(i, num_batches, count))
    # Its own batches; a process that owns none makes the last one once, for its shapes.
    assert made[i] == (owned or [num_batches - 1])


def test_one_process_gathers_nothing(monkeypatch):
  monkeypatch.setattr(shares.multihost_utils, 'process_allgather',
                      lambda tree: pytest.fail('one process must not gather'))
  parts = list(shares.in_order(3, lambda j: {'x': np.full((2,), j)}, 2))
  assert [p['x'].tolist() for p in parts] == [[0, 0], [1, 1], [2, 2]]


def test_a_batch_larger_than_its_declared_size_is_an_error(monkeypatch):
  run_all = fake_processes(monkeypatch, 2)
  with pytest.raises(ValueError, match='exceeds the batch size 2'):
    run_all(lambda i: list(shares.in_order(2, lambda j: {'x': np.zeros(3)}, 2)))


# --------------------------------------------------------- 2 gloo processes, end to end

OVERRIDES = ('--config.reverse.enabled=True', '--config.schedule.plan=two_stage',
             '--config.schedule.forward_steps=4', '--config.schedule.reverse_steps=4',
             '--config.sample_every=1000', '--config.eval_every=1000',
             # 15 samples in batches of 6: the last batch is short, and in the second round
             # process 1 has no batch of its own.
             '--config.eval.num_samples=15', '--config.eval.batch=6',
             '--config.eval.is_splits=3', '--config.eval.decoders=reverse,exact',
             '--config.eval.save_samples=True')
TIMING = {'sampling_seconds'}


def comparable(saved: dict, workdir) -> dict:
  """eval.json without what may differ between runs: timings, the workdir's path and the
  process count."""
  text = json.dumps(saved).replace(str(workdir), 'WORKDIR')
  result = json.loads(text)
  for entry in result['decoders'].values():
    for key in TIMING:
      entry.pop(key)
  assert result['protocol'].pop('processes')['count'] in (1, 2)
  return result


def assert_close(a, b, where='eval.json'):
  if isinstance(a, dict):
    assert set(a) == set(b), (where, set(a) ^ set(b))
    for k in a:
      assert_close(a[k], b[k], f'{where}.{k}')
  elif isinstance(a, list):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close(x, y, f'{where}[{i}]')
  elif isinstance(a, float) or isinstance(b, float):
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9, err_msg=where)
  else:
    assert a == b, (where, a, b)


@pytest.mark.slow  # two processes run a whole eval: about 3 minutes of CI on 2 cores (round 4)
def test_two_processes_write_the_eval_json_of_one(tmp_path):
  trained = tmp_path / 'trained'
  config = parse_config(*OVERRIDES)
  train.train_and_evaluate(config, trained)
  one, two = tmp_path / 'one', tmp_path / 'two'
  shutil.copytree(trained, one)
  shutil.copytree(trained, two)

  evaluate.run(config, one)
  launch('local_multiprocess.sh', 2, 1, f'--config={TINY}', *OVERRIDES, '--mode=eval',
         f'--workdir={two}', timeout=300, logs=[two / 'logs' / 'process_*.log'])

  saved_one = json.loads((one / 'eval.json').read_text())
  saved_two = json.loads((two / 'eval.json').read_text())
  assert saved_two['protocol']['processes']['count'] == 2
  assert_close(comparable(saved_one, one), comparable(saved_two, two))
  assert set(saved_two['decoders']) == {'reverse', 'exact'}
  assert saved_two['real_train_images']['frechet_distance'] < min(
      e['frechet_distance'] for e in saved_two['decoders'].values())
  # Process 0 alone wrote the samples, all 15 in the one-process order, and the cache.
  for name in ('reverse_step8_n15.npz', 'exact_step8_n15.npz'):
    with np.load(one / 'eval_samples' / name) as a, np.load(two / 'eval_samples' / name) as b:
      assert b['arr_0'].shape == (15, 28, 28, 3)
      np.testing.assert_array_equal(a['arr_1'], b['arr_1'])
      np.testing.assert_array_equal(a['arr_0'], b['arr_0'])  # the same program per batch
  assert len(list((two / 'eval_cache').glob('real-*.npz'))) == 1
  assert not list((two / 'eval_samples').glob('.*tmp'))
