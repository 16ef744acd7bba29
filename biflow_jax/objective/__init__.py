"""The BiFlow objective: what is minimised, term by term, and when.

- `biflow`: THE loss (`loss_fn`): F's NLL, G's reverse loss (hidden alignment,
  distillation, inverse matching), training-time CFG, weighted by the phase.
- `primitives`: its pure pieces (bits/dim, distances, norm control, adaptive and token
  weights, the CFG combination).
- `phases`: the phase plan (which group trains when, each term's weight).
- `perceptual`, `feature_term`: feature-space distances on G's output (LPIPS,
  ConvNeXt, the project's own small feature net).
- `frozen`: loading the frozen networks those terms (and latent decoding) run.

May import: `models/`, `convert/`, `assets`. Never training, data, inference,
evaluation or modes: the objective is a pure function of parameters and a batch.
"""
