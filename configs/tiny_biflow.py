"""configs/tiny.py with G: F for 30 steps, then G for 20, on bundled MNIST in seconds.

The README's quick start can be walked on it end to end (train, eval, sample with G,
bench, edit, likelihood, export) in a few minutes on a laptop CPU, with no flag beyond
--config and --workdir. Everything of configs/tiny.py, plus a tiny G (two_stage plan)
whose learning rate warms up in 5 steps, and an evaluation of 100 samples. Not for
quality: G after 20 steps draws blobs.
"""
import importlib.util
from pathlib import Path


def _tiny_config():
  # Config files are loaded by path (ml_collections' config_flags), not as a package.
  spec = importlib.util.spec_from_file_location('tiny', Path(__file__).with_name('tiny.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = _tiny_config()
  c.reverse.enabled = True
  c.reverse.size = 'tiny'
  c.schedule.plan = 'two_stage'
  c.schedule.forward_steps = 30
  c.schedule.reverse_steps = 20
  c.optim.reverse.lr = 1e-3
  c.optim.reverse.warmup_steps = 5
  c.eval_every = 50                   # held-out bits/dim and a grid of every decoder,
  c.sample_every = 50                 # at the end
  c.eval.num_samples = 100
  c.eval.batch = 100
  c.bench.repeats = 2
  return c
