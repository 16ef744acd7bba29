"""The experiment schema: every hyper-parameter a run has, with its default.

Each file in `configs/` starts from `base_config()` and changes what its experiment
changes, so a config reads like an experiment description and `--config.a.b=v`
can override any field (ml_collections rejects unknown ones).
"""
from __future__ import annotations

import ml_collections


def optimizer_group(lr: float = 3e-4, warmup_steps: int = 200) -> ml_collections.ConfigDict:
  """AdamW + warmup-cosine + clipping for one parameter group."""
  return ml_collections.ConfigDict(dict(
      lr=lr,                 # peak learning rate after warmup
      warmup_steps=warmup_steps,
      min_lr_ratio=0.05,     # cosine decays to lr * min_lr_ratio at the group's last step
      weight_decay=1e-4,     # decoupled; applied to matrices only (not biases, norms, embeddings)
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      grad_clip=1.0,         # global norm over the group's own gradients
      ema_decay=0.999,
  ))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # global batch; each JAX process loads batch_size / process_count

  # Forward flow F (iTARFlow): data -> noise by maximum likelihood.
  c.model = ml_collections.ConfigDict(dict(
      image_size=28,
      in_channels=1,
      patch_size=4,
      channels=128,          # Transformer width d
      num_blocks=4,          # flow blocks B
      layers_per_block=2,    # causal Transformer layers L per block
      num_heads=4,
      mlp_ratio=4,
      num_classes=10,        # 0 = unconditional
      clip=3.0,              # norm control: a, b clipped to [-clip, clip]; None = off
      dtype='float32',       # compute dtype; params stay float32 ('bfloat16' on TPU/GPU)
  ))

  # Reverse model G: filled in by the reverse-model issue; kept as a group so a config
  # already names every part of the experiment.
  c.reverse = ml_collections.ConfigDict(dict(enabled=False, size='tiny'))

  c.data = ml_collections.ConfigDict(dict(
      source='bundled_mnist',   # bundled_mnist | tfds | jpeg
      tfds_name='',             # e.g. 'cifar10', 'imagenet_resized/64x64'
      train_split='train',
      heldout_split='test',
      data_dir='',              # tfds data_dir ('' = tfds default)
      path='',                  # jpeg: a folder or .tar(.gz) with <split>/<class>/<file>.jpg
      num_train=9000,           # bundled_mnist: first part of a fixed permutation
      num_heldout=1000,         # bundled_mnist: the fixed remainder
      seed=0,                   # shuffle seed (the bundled train/held-out split ignores it)
      num_threads=2,            # grain prefetch threads (0 = inline), each making whole batches
  ))

  c.objective = ml_collections.ConfigDict(dict(
      noise_sigma=0.1,          # F models x~ = x + sigma * eps (x in [-1, 1])
      label_drop_prob=0.1,      # label -> -1 (the null class), so guidance exists
      nll_weight=1.0,
      reverse_weight=1.0,       # lambda in L = L_NLL + lambda * L_reverse
  ))

  # Phase plan: forward_only | two_stage | progressive (see optim.build_phase_plan).
  c.schedule = ml_collections.ConfigDict(dict(
      plan='forward_only',
      forward_steps=2000,       # F alone
      joint_steps=0,            # progressive: F and G together
      reverse_steps=0,          # G alone, F frozen
  ))

  c.optim = ml_collections.ConfigDict(dict(
      forward=optimizer_group(),
      reverse=optimizer_group(),
  ))

  c.sample = ml_collections.ConfigDict(dict(
      num=100,                  # images in a grid (one row per class when conditional)
      decoder='exact',          # exact | fixed_point | reverse
      guidance=0.0,
      temperature=1.0,
      denoise='score',          # score | none (the reverse model learns its own)
      fixed_point_tol=1e-3,     # stop a block's Jacobi sweeps at this max-abs update
      fixed_point_max_iters=0,  # 0 = number of tokens (exact by causality)
      fixed_point_groups=1,     # 1 = Jacobi; G > 1 = Gauss-Seidel over G groups
  ))

  c.log_every = 50
  c.sample_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_every = 1000
  c.eval_batches = 8           # held-out batches for bits/dim at each eval
  return c
