"""A tiny market config on a 2-year slice (2007 trains, 2008 is held out) for tests:
seconds on CPU, not for quality."""
from __future__ import annotations

import importlib.util
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'market_sp500.py'


def tiny_market_config(forward_steps: int = 30, reverse_steps: int = 20):
  spec = importlib.util.spec_from_file_location('market_sp500', CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.market.start, c.market.end = '2007-01-01', '2008-12-31'
  c.market.vol_bins = 3
  m = c.model
  m.channels, m.num_blocks, m.layers_per_block, m.num_heads = 16, 2, 1, 2
  m.num_classes = 3
  c.batch_size = 16
  c.schedule.forward_steps, c.schedule.reverse_steps = forward_steps, reverse_steps
  c.log_every = 10
  c.eval_every = 10 ** 6
  c.eval_batches = 1
  c.checkpoint_every = forward_steps + reverse_steps
  c.sample.num = 50
  e = c.market_eval
  e.num_samples, e.exact_samples, e.baselines, e.garch, e.n_boot, e.batch = 200, 40, 200, False, 20, 100
  s = c.stress
  s.num, s.mc_check, s.reverse_steps = 300, 2000, 10
  s.temperatures, s.percentiles, s.levels = '1.5', '99', '0.99,0.995'
  return c
