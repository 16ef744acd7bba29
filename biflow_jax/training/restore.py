"""A trained run for the modes: the config it was trained with, its experiment and the
latest checkpoint's state."""
from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections
from absl import logging
from etils import epath

from biflow_jax import config_lib
from biflow_jax.training import checkpoints

_SHOWN = 12  # fields listed in a log line before '...'


def _listed(items: list[str]) -> str:
  return ', '.join(items[:_SHOWN]) + (f' ... ({len(items)} in all)' if len(items) > _SHOWN else '')


def config_for_mode(given: ml_collections.ConfigDict, workdir: epath.PathLike,
                    overrides: Mapping[str, Any], source: str) -> ml_collections.ConfigDict:
  """The config a mode uses on the run in `workdir`, and a log line saying which it is.

  With DIR/config.json (written by training): `config_lib.for_mode`, i.e. the run's
  fields for what was trained, `given` (`source`, e.g. '--config=configs/mnist.py') for
  config_lib.USE_GROUPS, the command line's `overrides` on top; fields where the run
  differs from `source` are listed. Without it (not a run yet, or bench on fresh
  weights): `given` as it is, and the log says so. Raises ValueError for a config.json
  that is not a JSON object.
  """
  path = epath.Path(workdir) / config_lib.RUN_CONFIG
  if not path.exists():
    logging.info('config: %s with the command line\'s overrides (%s has no %s)', source,
                 workdir, config_lib.RUN_CONFIG)
    return given
  try:
    run = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f'{path} is not JSON ({e}): restore it from a copy, or move it away to '
                     f'run with {source} as it is') from e
  if not isinstance(run, dict):
    raise ValueError(f'{path} holds {type(run).__name__}, not a config: restore it from a '
                     f'copy, or move it away to run with {source} as it is')
  config, notes = config_lib.for_mode(given, run, overrides)
  logging.info("config: the run's %s (how it was trained), %s from %s%s", path,
               '/'.join(config_lib.USE_GROUPS), source,
               f', and the command line\'s overrides {dict(overrides)}' if overrides else '')
  if notes['differs']:
    logging.info('the run was trained with settings %s does not have; the run\'s are used '
                 '(override one with --config.<field>=...): %s', source, _listed(notes['differs']))
  if notes['kept']:
    logging.warning('%s has fields this code cannot take; %s\'s are used instead: %s', path,
                    source, _listed(notes['kept']))
  if notes['missing']:
    logging.info('%s predates fields that %s gives (their values are used): %s', path, source,
                 _listed(notes['missing']))
  return config
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
