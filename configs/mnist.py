"""The embedded default: class-conditional BiFlow on the bundled MNIST test split.

9,000 digits train, a fixed 1,000 are held out. The paper's two-stage schedule: F
(iTARFlow) learns by likelihood, then F is frozen and the reverse model G learns to
invert it in one pass from F's own trajectories (hidden alignment, learned
denoising, training-time CFG on half of each G batch, adaptive weighting, a feature term,
Muon for G's weight matrices at lr 1.6e-2). With AdamW's G, 27.8 minutes on 2 idle CPU
cores of the machine of rounds 4-6 (F 2.06, G 1.63 steps/s: docs/experiments/mnist.md, round 6); a Muon
step costs 1.09x (round 9); round 10's slower machine runs F at 1.16 and Muon's G at 0.85
steps/s alone. Grids show
G (1 NFE), F's exact inverse and F's fixed-point inverse side by side, from the same
noise and labels.
"""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 64
  # F: 49 tokens (7x7 patches of 4x4x1 = 16 dims), width 128, 4 blocks x 2 layers (1.6M).
  c.model.image_size = 28
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 128
  c.model.num_blocks = 4
  c.model.layers_per_block = 2
  c.model.num_heads = 4
  c.model.num_classes = 10
  c.model.clip = 3.0
  # G: width 128, 5 layers = one per stage (4 mirroring F's blocks + the denoise stage).
  c.reverse.enabled = True
  c.reverse.size = 'tiny'
  c.reverse.width = 128
  c.reverse.depth = 5
  c.reverse.num_heads = 4
  c.objective.noise_sigma = 0.1
  c.objective.label_drop_prob = 0.1
  c.objective.reverse_mode = 'align'
  c.objective.denoise = 'learned'
  # Training-time CFG (w ~ U[0, 3), a quarter of examples at w = 0): G's guided samples
  # stay 1 NFE. It doubles G's cost per step, and was the largest gain measured for G
  # (docs/experiments/mnist.md, E3: FD 281 -> 149 at w = 3, t = 0.7).
  c.objective.cfg_w_max = 3.0
  # ... on half of each G batch: the other half trains at w = 0 with no unconditional pass,
  # a 0.79x step, so G fits 1,266 steps in the time of 1,000 full ones (round 5, A4).
  c.objective.cfg_guided_fraction = 0.5
  # Each term of G's loss weighted per sample by d / sg(d + 1e-3) (the paper's ImageNet
  # setting; method.md §4.9): unguided FD 83.0 +- 1.6 -> 77.0 +- 1.0 over two G seeds, free.
  c.objective.adaptive_p = 1.0
  # A feature term on G's output (objective/feature_term.py): the shipped net trained on the training
  # split only, not the evaluation classifier (docs/experiments/mnist.md, G1-G5).
  c.perceptual.feature_weight = 1.0
  c.schedule.plan = 'two_stage'
  c.schedule.forward_steps = 1800
  c.schedule.reverse_steps = 1266
  c.optim.forward.lr = 3e-3
  c.optim.forward.warmup_steps = 100
  # G's learning rate was the largest lever on G's recall measured in round 4 (G alone on
  # this F, 1,000 steps, w 0, t 0.85: lr 2e-3 FD 136 / recall 0.03, 4e-3 97 / 0.20, 8e-3
  # 91; guided w 0.5: 48 -> 29 -> 25; docs/experiments/mnist.md, round 4).
  # With Muon, twice that (rounds 10-11: on one F, w 0 41.1 -> 31.0; G alone on the
  # default's two Fs, w 0 30.5 +- 0.9 at recall 0.64-0.70 against their exact inverse's
  # 46.6 +- 1.4, guided 19.0 +- 0.1; the collapse guard 0.0083-0.0099 < 0.0165).
  c.optim.reverse.lr = 1.6e-2
  c.optim.reverse.warmup_steps = 50
  # No decay: G's losses still fall steeply at its last step (round 4, E9: unguided 91 -> 82).
  c.optim.reverse.min_lr_ratio = 1.0
  # Muon for G's weight matrices (optax.contrib.muon at AdamW's update RMS, so lr and decay
  # keep their meaning; Adam for the other leaves; a step costs 1.09x): the largest unguided
  # lever at this G budget (docs/experiments/mnist.md, rounds 9-10: w 0, 54.2 -> 41.6 / 42.2
  # over two G seeds on one F; guided a tie).
  c.optim.reverse.algorithm = 'muon'
  # G learns to invert F's EMA, the F that sampling, the exact inverse and bits/dim use.
  c.objective.reverse_teacher = 'ema'
  c.sample.num = 100                 # 10 rows, one per class
  # Each decoder at its best cell over two training seeds of converged sweeps (tools/sweep,
  # refined at the finer lattice; docs/experiments/mnist.md, F's: round 10, G's: round 11):
  c.sample.guidance = 0.5            # F's inverses
  c.sample.temperature = 0.775
  # G's FD is jagged along w (one run's cell of three is 45 where its neighbours are 19-21:
  # round 11), so G's cell is the one whose worst of three runs is best (19.0 / 23.9 / 20.8).
  c.sample.reverse_guidance = 0.5    # G (1 NFE; w is an input, trained on w < 3)
  c.sample.reverse_temperature = 1.0
  c.log_every = 100
  c.eval_every = 600
  c.eval_batches = 15                # 960 of the 1,000 held-out digits
  c.sample_every = 1000
  c.checkpoint_every = 400
  return c
