"""Orbax checkpoints of the whole run: train state (params, optimiser, EMA, step, rng)
and the grain data iterator, so a restarted job continues where it stopped.

Orbax commits a step atomically (written to a temporary directory, then renamed), so
a job killed mid-save leaves the previous complete checkpoint as the latest one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from biflow_jax import input_pipeline


def make_manager(workdir: str | Path, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(Path(workdir).absolute() / 'checkpoints', options=options,
                               item_names=('state', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None) -> None:
  """Starts an (async) save of `state` and, when given, the data iterator position."""
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = input_pipeline.iterator_save_arg(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter=None,
            step: int | None = None) -> tuple[Any, int]:
  """(state, step) from `step` (default: the latest); moves `data_iter` in place."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}: train first '
                            '(--mode=train) or point --workdir at a run that has one')
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items['data'] = input_pipeline.iterator_restore_arg(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], step


def abstract_like(state: Any) -> Any:
  """Shape/dtype/sharding structure to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
