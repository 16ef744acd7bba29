"""Sampling from trained parameters.

- `sampling`: jitted, pure samplers per decoder: G in 1 NFE, F's exact and
  fixed-point inverses, score denoising, inpainting and interpolation in noise space.
- `decoders`: each decoder's guidance, temperature and denoiser from the config, the
  side-by-side sample grid, the VAE decode of latent samples.
- `market_sampling`: G, F's exact inverse, F's density and encoder for market windows in
  model space (no pixel clipping), with noise from F's base.

May import: `models/`, `objective/`, `runtime/`. Not training: the training loop draws
its grids with this package (restoring a run for the modes is `training/restore.py`).
"""
