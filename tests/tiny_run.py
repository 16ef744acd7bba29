"""A tiny two-stage run (F, then G against the frozen F) shared by the tests of the modes
that read a trained run: likelihood, editing, export. Seconds on CPU, not for quality."""
from __future__ import annotations

from test_train import parse_config


def two_stage_config(forward_steps: int = 40, reverse_steps: int = 20):
  config = parse_config()
  config.reverse.enabled = True
  config.reverse.size = 'tiny'
  config.schedule.plan = 'two_stage'
  config.schedule.forward_steps = forward_steps
  config.schedule.reverse_steps = reverse_steps
  config.log_every = 20
  config.eval_every = config.sample_every = 100000
  config.checkpoint_every = forward_steps + reverse_steps
  return config


def flags_of(config) -> list[str]:
  """The --config.* overrides that make configs/tiny.py into `two_stage_config()`."""
  return ['--config.reverse.enabled=True', '--config.schedule.plan=two_stage',
          f'--config.schedule.forward_steps={config.schedule.forward_steps}',
          f'--config.schedule.reverse_steps={config.schedule.reverse_steps}']
