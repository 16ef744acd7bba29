"""The main job on the tiny config: configs, training on real data, resume, sampling."""
import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import likelihood
from biflow_jax.modes import sample
from biflow_jax.objective import phases
from biflow_jax.training import optim, train, train_state
from biflow_jax.training.experiment import build_models
from subprocess_util import Child, python

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'configs' / 'tiny.py')


def parse_config_file(config_file, *overrides):
  """(config, the command line's overrides) as main's --config flag parses them."""
  argv = ['prog', f'--config={config_file}', *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config, config_flags.get_override_values(fv['config'])


def parse_config(*overrides):
  return parse_config_file(TINY, *overrides)[0]


def tiny_config(**schedule):
  config = parse_config()
  for key, value in schedule.items():
    setattr(config.schedule, key, value)
  return config


def test_config_parse_and_override():
  config = parse_config('--config.model.channels=48', '--config.objective.noise_sigma=0.2')
  assert config.model.channels == 48 and config.objective.noise_sigma == 0.2
  assert config.batch_size == 16


def test_unknown_override_is_an_error():
  with pytest.raises((AttributeError, KeyError), match='nope'):
    parse_config('--config.model.nope=1')


def test_unknown_override_on_the_command_line_is_one_clear_line(tmp_path):
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={tmp_path}',
                '--config.model.nope=1', expect=2, timeout=120)
  assert proc.returncode == 2
  assert 'names a field the config does not have' in proc.stderr
  assert not any(tmp_path.iterdir())  # nothing written


def test_tiny_config_trains_and_nll_falls(tmp_path):
  config = tiny_config()
  models = build_models(config)
  flow = models.flow
  plan = phases.build_phase_plan(config)
  heldout = input_pipeline.load_heldout(config)
  initial = train_state.init_state(config, models, optim.make_optimizer(config, plan))
  before = likelihood.heldout_bits_per_dim(flow, initial.params['forward'], heldout, config)
  state = train.train_and_evaluate(config, tmp_path)
  after = likelihood.heldout_bits_per_dim(flow, state.params['forward'], heldout, config)
  assert int(state.step) == 30
  assert after < before - 0.3, (before, after)
  assert (tmp_path / 'samples' / 'step_30.png').exists()
  assert (tmp_path / 'config.json').exists()
  assert any(p.name.startswith('events.out.tfevents') for p in tmp_path.iterdir())


def test_resume_equals_uninterrupted(tmp_path):
  config = tiny_config(forward_steps=12)
  config.checkpoint_every = 4
  config.sample_every = 1000
  config.eval_every = 1000
  straight = train.train_and_evaluate(config, tmp_path / 'straight')
  train.train_and_evaluate(config, tmp_path / 'resumed', stop_at=6)
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed')
  assert int(resumed.step) == 12
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  # and the interruption really happened: step 6 was a checkpoint of the second run
  assert (tmp_path / 'resumed' / 'checkpoints' / '6').exists()
  assert not (tmp_path / 'straight' / 'checkpoints' / '6').exists()


def test_sample_mode_from_checkpoint(tmp_path):
  config = tiny_config(forward_steps=4)
  config.sample_every = 1000
  config.eval_every = 1000
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    sample.run(config, tmp_path)
  assert not any(tmp_path.iterdir())  # the failed call wrote nothing
  train.train_and_evaluate(config, tmp_path)
  config.sample.decoder = 'fixed_point'
  path = sample.run(config, tmp_path, name='grid')
  saved = np.load(tmp_path / 'samples' / 'grid.npz')
  assert path.exists() and saved['images'].shape == (20, 28, 28, 1)
  assert saved['images'].dtype == np.uint8 and saved['labels'].shape == (20,)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  cmd = [sys.executable, '-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={tmp_path}',
         '--config.schedule.forward_steps=100000', '--config.checkpoint_every=100000',
         '--config.log_every=1', '--config.eval_every=100000', '--config.sample_every=100000']
  with Child(cmd) as proc:
    # wait until it is really training
    proc.wait_for(lambda line: 'step 3/' in line and ' loss ' in line, timeout=120,
                  what='training step 3')
    proc.send_signal(signal.SIGTERM)
    assert proc.finish(expect=0, timeout=120) == 0, proc.output[-2000:]
    output = proc.output
  steps = [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000, (
      sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()), output[-6000:])


@pytest.mark.slow  # a main-job run (~12 s); test_sigterm_saves_and_exits_cleanly stays
def test_sigterm_late_in_a_step_still_saves(tmp_path, monkeypatch):
  """A SIGTERM that arrives after a step has decided not to save (here: during its held-out
  evaluation) is acted on after the next step, with a checkpoint, never by stopping unsaved.
  (Before the fix the loop read the flag twice per step and stopped without a checkpoint.)"""
  config = tiny_config(forward_steps=1000)
  config.checkpoint_every, config.eval_every = 1000, 5
  config.sample_every, config.log_every = 1000, 1000
  heldout_metrics = likelihood.heldout_metrics

  def heldout_metrics_then_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # handled here, mid-iteration
    return heldout_metrics(*args, **kwargs)

  monkeypatch.setattr(likelihood, 'heldout_metrics', heldout_metrics_then_sigterm)
  state = train.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 6
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps == [6]
