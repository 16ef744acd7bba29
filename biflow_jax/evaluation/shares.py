"""Evaluation over many processes: each process makes its share of the batches, and every
process sees all of them, in the one-process order.

A stream of `num_batches` numbered batches (samples of batch j are drawn with noise
fold_in(EVAL_SEED, j); real images of batch j are rows j*batch.. of the subset) is dealt
round by round: in round r, process p makes batch r*P + p. After each round the
processes' outputs (features, labels, optionally uint8 images; never the float images)
are gathered with `multihost_utils.process_allgather` and handed on in batch order. So the
union of the shares is exactly the one-process set, with the same noise per sample, and
whatever consumes the stream (running moments, precision/recall, Inception Score, the
samples .npz) sees the same rows in the same order as in one process: the scores equal
one process's up to the feature nets' own run-to-run arithmetic.

Every process must iterate every stream to its end (the gathers are collectives).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

Produce = Callable[[int], dict[str, np.ndarray]]  # batch index -> arrays with rows first


def _rows(arrays: dict[str, np.ndarray]) -> int:
  counts = {k: int(np.shape(v)[0]) for k, v in arrays.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f'every array of a batch needs the same number of rows, got {counts}')
  return next(iter(counts.values()))


def _padded(arrays: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Each array zero-padded to `rows` rows: every process contributes one shape."""
  out = {}
  for k, v in arrays.items():
    v = np.asarray(v)
    if v.shape[0] > rows:
      raise ValueError(f'{k}: a batch of {v.shape[0]} rows exceeds the batch size {rows}')
    out[k] = np.concatenate([v, np.zeros((rows - v.shape[0],) + v.shape[1:], v.dtype)])
  return out


def in_order(num_batches: int, produce: Produce, batch: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches 0..num_batches-1 of `produce`, in order, each made by one process.

  produce(j) -> {name: (n_j, ...) array}, n_j <= batch rows, the same names, trailing
  shapes and dtypes for every j. One process: produce(j) for each j, nothing gathered.
  Several: this process calls produce only for `owned_batches`; in a round where it has
  none (the last round when P does not divide num_batches) it sends its previous batch
  marked empty, so all shapes agree (a process that never owns a batch, with fewer
  batches than processes, makes the last batch once just for its shapes).
  """
  num_batches = int(num_batches)
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    for j in range(num_batches):
      yield produce(j)
    return
  last: dict[str, np.ndarray] | None = None
  for r in range(math.ceil(num_batches / count)):
    j = r * count + index
    rows = 0
    if j < num_batches:
      made = produce(j)
      rows = _rows(made)
      last = _padded(made, batch)
    elif last is None:
      last = _padded(produce(num_batches - 1), batch)
    gathered = multihost_utils.process_allgather(
        {'rows': np.asarray(rows, np.int32), 'arrays': last})
    for q in range(count):
      if r * count + q >= num_batches:
        break
      n = int(gathered['rows'][q])
      yield {k: np.asarray(v[q, :n]) for k, v in gathered['arrays'].items()}
