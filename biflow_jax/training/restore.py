"""A trained run for the modes: its experiment and the latest checkpoint's state."""
from __future__ import annotations

import ml_collections
from etils import epath

from biflow_jax.training import checkpoints
from biflow_jax.training.experiment import Experiment, build_experiment
from biflow_jax.training.train_state import TrainState


def restore_run(config: ml_collections.ConfigDict, workdir: epath.PathLike,
                with_perceptual: bool = False) -> tuple[Experiment, TrainState, int]:
  """(experiment, state, step) from the latest checkpoint in workdir (no data iterator).

  Raises FileNotFoundError (creating nothing) when workdir has no checkpoint, and the
  errors of `checkpoints.restore` for one of another model or code version.
  """
  exp = build_experiment(config, with_perceptual=with_perceptual)
  checkpoint_dir = epath.Path(workdir) / 'checkpoints'
  if not checkpoint_dir.is_dir():  # say so without creating anything
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir}: train first '
                            '(--mode=train) or point --workdir at a run that has one')
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  try:
    state, step = checkpoints.restore(manager, exp.abstract_state)
  finally:
    manager.close()
  return exp, state, step
