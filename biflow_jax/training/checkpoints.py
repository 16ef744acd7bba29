"""Orbax checkpoints of the whole run: train state (params, optimiser, EMA, step, rng)
and the grain data iterator, so a restarted job continues where it stopped.

Orbax commits a step atomically (written to a temporary directory, then renamed), so
a job killed mid-save leaves the previous complete checkpoint as the latest one. A save
that fails (no space left, a read-only or broken store) is reported as
`CheckpointSaveError` by `save` or `wait`, whichever runs next: saves are asynchronous.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from biflow_jax.data import input_pipeline


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the complete ones before it are untouched."""


class CheckpointUnreadableError(RuntimeError):
  """A step's metadata cannot be read (damaged storage, not a checkpoint). Not a
  ValueError on purpose: `restore` falls back past it, while a ValueError (another model)
  stops."""


def make_manager(workdir: str | epath.PathLike, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / 'checkpoints', options=options,
                               item_names=('state', 'data'))


def complete_steps(directory: str | epath.PathLike) -> list[int]:
  """Steps committed in `directory`, oldest first (unfinished `*.orbax-checkpoint-tmp*`
  directories and set-aside `damaged_*` ones are not steps)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def newest_complete(directory: str | epath.PathLike) -> str:
  """'the newest complete checkpoint is step N in DIR' or 'no complete checkpoint in DIR'
  (what is on disk, for messages that tell a user what they can resume from)."""
  steps = complete_steps(directory)
  if not steps:
    return f'there is no complete checkpoint in {directory}'
  return f'the newest complete checkpoint is step {steps[-1]} in {directory}'


class Announcer:
  """Says 'checkpoint N -> DIR/N' once step N is committed, never before.

  Saves are asynchronous: when `save` returns, the step is still being written (as
  `N.orbax-checkpoint-tmp`), and a job stopped then (Ctrl-C, a kill) never commits it.
  `saved(step)` notes a save to announce; `poll()` (cheap: a flag orbax keeps) announces
  the noted steps whose directory is committed once no save is in flight; `flush()` after
  `wait` announces what remains.
  """

  def __init__(self, manager: ocp.CheckpointManager, announce: bool = True):
    self.manager, self.announce, self.pending = manager, announce, []

  def saved(self, step: int) -> None:
    if self.announce:
      self.pending.append(step)

  def poll(self) -> None:
    if self.pending and not self.manager.is_saving_in_progress():
      self.flush()

  def flush(self) -> None:
    directory = epath.Path(self.manager.directory)
    for step in self.pending:
      if (directory / str(step)).is_dir():
        logging.info('checkpoint %d -> %s', step, directory / str(step))
    self.pending = []


def _save_failed(manager: ocp.CheckpointManager, error: Exception) -> CheckpointSaveError:
  steps = complete_steps(manager.directory)
  newest = (f'The newest complete checkpoint is step {steps[-1]}, untouched' if steps
            else 'No complete checkpoint was written yet')
  return CheckpointSaveError(
      f'writing a checkpoint in {manager.directory} failed, so the job stops: {error}. '
      f'{newest} (an unfinished step is left as a *.orbax-checkpoint-tmp '
      'directory, which restore ignores and the next save of that step replaces). Free space '
      'or fix the storage, then rerun the same command to resume.')


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter=None) -> None:
  """Starts an (async) save of `state` and, when given, the data iterator position.

  Raises CheckpointSaveError when this save, or the one still in flight before it, fails.
  """
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = input_pipeline.iterator_save_arg(data_iter)
  try:
    manager.save(step, args=ocp.args.Composite(**items), force=True)
  except Exception as e:  # pylint: disable=broad-except  (orbax raises ValueError, OSError, ...)
    raise _save_failed(manager, e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until the saves in flight are committed; CheckpointSaveError if one failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  (orbax raises ValueError, OSError, ...)
    raise _save_failed(manager, e) from e


def state_tree_metadata(state_dir: epath.PathLike) -> dict:
  """The saved tree's metadata (shapes, dtypes) of one item directory, e.g.
  DIR/checkpoints/<step>/state, read without its arrays.

  Read through the item's handler, not a `Checkpointer`: a Checkpointer also looks for
  step metadata (`_CHECKPOINT_METADATA`) inside the item directory, where a
  CheckpointManager never writes it (it is one level up, in the step directory), and
  logs a warning on every read of a complete checkpoint. Orbax takes absolute paths only
  (a relative one reads as no metadata at all), so the path is made absolute here.
  Raises CheckpointUnreadableError when there is no readable tree.
  """
  path = epath.Path(state_dir).absolute()
  handler = ocp.StandardCheckpointHandler()
  try:
    metadata = handler.metadata(path)
  except Exception as e:  # pylint: disable=broad-except  (FileNotFoundError, JSON errors, ...)
    raise CheckpointUnreadableError(f'{path}: {type(e).__name__}: {e}') from e
  finally:
    handler.close()
  tree = getattr(metadata, 'tree', metadata)
  if not isinstance(tree, dict):
    raise CheckpointUnreadableError(f'{path} holds no tree (it holds {type(tree).__name__})')
  return tree


def leaf_name(key_path) -> str:
  """A leaf's path as one name, its keys joined by '/' (e.g. 'reverse/blocks_0/Dense_0/kernel'):
  how checkpoint checks, exports and post-hoc EMA snapshots name parameters."""
  return '/'.join(str(getattr(k, 'key', k)) for k in key_path)


def named_leaves(tree) -> dict[str, Any]:
  """{leaf_name(path): leaf} over a tree's leaves, in flattening order."""
  return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _shapes(tree, shape_of) -> dict[str, tuple[int, ...]]:
  return {name: shape_of(leaf) for name, leaf in named_leaves(tree).items()}


def check_compatible(step_dir: epath.Path, abstract_state: Any) -> None:
  """A checkpoint of a different model is a config error: say which parameter differs."""
  tree = state_tree_metadata(step_dir / 'state')
  fields = {f.name for f in dataclasses.fields(abstract_state)}
  if set(tree) != fields:
    raise ValueError(
        f'the checkpoint {step_dir} holds train-state fields {sorted(tree)} but this code '
        f'expects {sorted(fields)}: it was written by another version of biflow_jax. '
        'Resume it with that version, or start a fresh --workdir.')
  saved = _shapes(tree['params'], lambda leaf: tuple(leaf.shape))
  wanted = _shapes(abstract_state.params, lambda leaf: tuple(leaf.shape))
  if saved == wanted:
    _check_optimizer_layout(step_dir, tree, abstract_state)
    return
  for name in sorted(set(saved) | set(wanted)):
    if saved.get(name) != wanted.get(name):
      raise ValueError(
          f'the checkpoint {step_dir} was written by a different model: parameter {name} is '
          f'{saved.get(name, "absent")} there and {wanted.get(name, "absent")} in this config. '
          'Use the config the run was trained with, or a fresh --workdir.')


def _optimizer_links(opt_state_tree: Any) -> dict[str, int]:
  """{group: number of links in its optimiser chain} of a multi_transform state as orbax
  stores it (AdamW 4: clip, Adam, decay, schedule; Muon 3: clip, Muon, schedule); {} when
  the tree is not of that form."""
  try:
    return {str(g): len(v['inner_state']) for g, v in opt_state_tree['inner_states'].items()}
  except (KeyError, TypeError, AttributeError):
    return {}


def _check_optimizer_layout(step_dir: epath.Path, tree: dict, abstract_state: Any) -> None:
  """Another optimiser (optim.<group>.algorithm) is a config error, not a damaged file."""
  saved = _optimizer_links(tree.get('opt_state'))
  wanted = _optimizer_links(ocp.tree.serialize_tree(abstract_state.opt_state,
                                                    keep_empty_nodes=True))
  for group in sorted(set(saved) & set(wanted)):
    if saved[group] != wanted[group]:
      raise ValueError(
          f'the checkpoint {step_dir} holds the optimiser state of another algorithm for '
          f'group {group!r} than this config (config.optim.{group}.algorithm): resume with '
          'the optimiser the run was trained with, or start a fresh --workdir (to start G '
          'from a trained F with another optimiser, use config.model.init_from).')


def _has_iterator_state(step_dir: epath.Path) -> bool:
  """Whether the step holds a data-iterator file for this process and process count."""
  name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  return (step_dir / 'data' / name).exists()


def restore(manager: ocp.CheckpointManager, abstract_state: Any, data_iter=None,
            step: int | None = None, set_aside_unreadable: bool = False) -> tuple[Any, int]:
  """(state, step) from `step` (default: the newest readable one); moves `data_iter` in place.

  Orbax commits steps atomically, so a kill mid-save leaves no partial step behind; a
  step that is there but unreadable (damaged storage) is skipped for the one before
  it, and the log says so. A checkpoint of another model shape is an error, not a skip.
  `set_aside_unreadable` (for a run that will train on) renames skipped steps to
  `damaged_<step>` so new saves can take their numbers; nothing is deleted.
  """
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}: train first '
                            '(--mode=train) or point --workdir at a run that has one')
  errors = []
  for candidate in steps:
    step_dir = epath.Path(manager.directory) / str(candidate)
    try:
      check_compatible(step_dir, abstract_state)
    except ValueError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (unreadable metadata)
      errors.append((candidate, e))
      logging.warning('checkpoint step %d in %s is unreadable (%s); trying the one before it.',
                      candidate, manager.directory, e)
      continue
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    same_hosts = data_iter is not None and _has_iterator_state(step_dir)
    if same_hosts:
      items['data'] = input_pipeline.iterator_restore_arg(data_iter)
    try:
      restored = manager.restore(candidate, args=ocp.args.Composite(**items))
      if data_iter is not None and not same_hosts:
        # Saved by another number of processes: the stream position is the number of
        # global batches taken, which is the step.
        logging.info('checkpoint %d was written by another process count; data iterator '
                     'positioned at global batch %d', candidate, candidate)
        input_pipeline.skip_to(data_iter, candidate)
    except Exception as e:  # pylint: disable=broad-except  (damaged array files)
      errors.append((candidate, e))
      logging.warning('checkpoint step %d in %s is unreadable (%s); trying the one before it.',
                      candidate, manager.directory, e)
      continue
    if errors:
      logging.warning('restored step %d; newer unreadable steps: %s', candidate,
                      [s for s, _ in errors])
      if set_aside_unreadable:
        for bad, _ in errors:
          bad_dir = epath.Path(manager.directory) / str(bad)
          bad_dir.rename(bad_dir.with_name(f'damaged_{bad}_{int(time.time())}'))
        manager.reload()
    return restored['state'], candidate
  raise CheckpointUnreadableError(f'no readable checkpoint in {manager.directory}: '
                     + '; '.join(f'step {s}: {e}' for s, e in errors))
