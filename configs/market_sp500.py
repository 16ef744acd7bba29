"""Market scenarios: BiFlow on 20-day windows of daily log returns of 20 S&P 500 stocks.

F (causal over days) learns the windows by likelihood, conditioned on the volatility
regime before the window; then G learns to invert F in one pass (two_stage, hidden
alignment, learned denoising), as for images. Data, split, metrics and stress tests:
docs/market.md. Trains F then G in minutes on 2 CPU cores (docs/market.md states the
measured steps/s and the load they ran under).

    python -m biflow_jax.main --config=configs/market_sp500.py --workdir=W --mode=train
    ... --mode=sample | eval | stress | likelihood
"""
import ml_collections

from biflow_jax import config_lib
from biflow_jax.data import market_source


def get_config():
  c = config_lib.base_config()
  c.seed = 0
  c.batch_size = 128

  c.data.source = 'market'
  c.data.name = 'sp500'
  c.data.num_threads = 0        # in-memory float arrays: a gather is one fancy index
  c.market = market_source.default_config()

  # One token per day: F's input is (days, 1, assets) with 1x1 patches, T = 20 tokens of
  # D = 20 numbers (the day's PCA-whitened standardised returns, data/market_space.py).
  # F is small on purpose: the training data is one 22-year series (about 4,400 days), and
  # a causal flow over days memorises it (the previous days identify the next one); wider
  # or deeper Fs fit training windows far better and validation years worse within a few
  # hundred steps (docs/market.md, "Choosing F on validation years").
  m = c.model
  m.image_size = c.market.days
  m.image_width = 1
  m.in_channels = 20
  m.patch_size = 1
  m.channels = 16
  m.num_blocks = 2              # one block forward in time, one backward
  m.layers_per_block = 1
  m.num_heads = 2
  m.num_classes = c.market.vol_bins   # the volatility-regime bin before the window
  m.clip = 3.0
  # A Gaussian base keeps Gaussian tails (Jaini et al. 2020): held-out crisis windows cost
  # thousands of nats. Student-t per dimension, unit variance (models/base_density.py).
  m.base = 'student_t'
  m.nu = 5.0

  c.reverse.enabled = True
  c.reverse.size = 'tiny'       # width 64, depth 3, 2 heads
  # G's heads end in an RMS norm, so its output cannot grow with |z|: heavy tails and a
  # day-to-day volatility scale need G to output (s, b) and x = z * exp(s) + b, the form of
  # F's own inverse (models/generator.py).
  c.reverse.skip = 'affine'

  o = c.objective
  # Continuous returns need no dequantisation; the small Gaussian noise (0.05 of a day's
  # whitened std) covers the price ticks of the 1990s (3-decimal rounding leaves 2% of
  # returns exactly 0) so F cannot put spikes on them, and gives G its learned denoising
  # target (docs/market.md, "Model").
  o.noise_sigma = 0.05
  o.label_drop_prob = 0.1
  o.reverse_mode = 'align'
  o.denoise = 'learned'
  o.cfg_w_max = 0.0             # no guidance: it would distort the regime's distribution
  # Half of each G batch are prior pairs (z from F's base, x~ = F^-1(z) exactly): trained on
  # F's latents of the ~4,400 training days alone, G fits them and not the fresh z it
  # samples from (docs/market.md, "G").
  o.prior_fraction = 0.5

  c.schedule.plan = 'two_stage'
  c.schedule.forward_steps = 1500
  c.schedule.reverse_steps = 3000
  c.optim.forward.lr = 1e-3
  c.optim.forward.warmup_steps = 100
  c.optim.reverse.lr = 1e-3
  c.optim.reverse.warmup_steps = 200

  c.sample.decoder = 'reverse'
  c.sample.denoise = 'none'     # G denoises itself; F^-1 samples keep sigma = 0.05 noise
  c.sample.num = 10000
  c.sample.label = -1           # -1: regimes drawn with their training shares; k: bin k

  c.log_every = 100
  c.eval_every = 1500
  c.eval_batches = 4
  c.checkpoint_every = 1500
  c.sample_every = 10 ** 9      # no image grids for market windows

  # --mode=eval (modes/market_eval.py)
  c.market_eval = ml_collections.ConfigDict(dict(
      num_samples=10000,        # scenarios per decoder (G and F's exact inverse)
      exact_samples=2000,       # the exact inverse is T x B serial steps: fewer
      baselines=4000,           # windows per in-tree baseline
      garch=True,               # CCC-GARCH(1,1)-t baseline (needs `arch`)
      n_boot=500,
      batch=1000,
      weights='',               # portfolio weights file (JSON/CSV); '' = equal weight
  ))
  # --mode=stress (modes/market_stress.py)
  c.stress = ml_collections.ConfigDict(dict(
      methods='tail_noise,condition,importance,reverse,backtest',
      weights='',               # portfolio weights file; '' = equal weight
      temperatures='1.2,1.5',   # tail_noise: z scaled by T
      percentiles='95,99',      # condition: training percentiles of trailing vol
      levels='0.99,0.995,0.999',  # importance: VaR/ES levels
      num=20000,                # samples per stressed distribution
      mc_check=200000,          # plain Monte Carlo draws to check importance sampling
      reverse_quantile=0.99,    # reverse: |z|^2 <= chi2_d(q) (or the base's q-HDR)
      reverse_steps=300,
      reverse_lr=0.05,
      seed=0,
  ))
  # --mode=likelihood for a market config: a prices (or returns) CSV
  c.likelihood.input = ''
  c.likelihood.kind = 'prices'  # prices | returns
  return c
