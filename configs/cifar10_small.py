"""Class-conditional BiFlow on CIFAR-10 at a size that trains on 2 CPU cores in under an hour.

  python -m biflow_jax.main --config=configs/cifar10_small.py --workdir=W \
      --config.data.path=/path/cifar10-jpeg.tar.gz

Data: a CIFAR-10 JPEG folder or tar laid out <split>/<class>/<file>.jpg (train/: 50,000,
test/: 10,000 held out). The recipe is the one measured best on MNIST
(docs/experiments/mnist.md): the paper's two stages, F (iTARFlow) by likelihood, then G
from F's (EMA) trajectories with hidden alignment, learned denoising, training-time CFG
(w < 5), a feature term and a constant learning rate of 8e-3 (the CIFAR-10 feature net shipped for G's loss, not the evaluation
classifier). `--mode=eval` scores with the shipped CIFAR-10 classifier
(`biflow_jax/assets/cifar10_classifier.json`). Measured: README, "CIFAR-10".

Sizes: F has 64 tokens (8x8 patches of 4x4x3 = 48 dims), width 192, 4 blocks x 2 layers
(3.6M params); G width 192, 5 layers (one per stage). TARFlow's CIFAR-10 noise
sigma 0.05. Step counts fill the hour on 2 idle cores (measured: README).
"""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 64
  c.model.image_size = 32
  c.model.in_channels = 3
  c.model.patch_size = 4
  c.model.channels = 128
  c.model.num_blocks = 4
  c.model.layers_per_block = 2
  c.model.num_heads = 4
  c.model.num_classes = 10
  c.model.clip = 3.0
  c.reverse.enabled = True
  c.reverse.width = 128
  c.reverse.depth = 5
  c.reverse.num_heads = 4
  c.data.source = 'jpeg'
  c.data.name = 'cifar10'           # picks the shipped classifier and feature net (assets/__init__.py)
  c.data.path = ''                  # required: --config.data.path=<folder or .tar.gz>
  c.data.train_split = 'train'
  c.data.heldout_split = 'test'
  c.objective.noise_sigma = 0.05
  c.objective.label_drop_prob = 0.1
  c.objective.reverse_mode = 'align'
  c.objective.denoise = 'learned'
  c.objective.cfg_w_max = 5.0       # the exact inverse gains up to w 4-5 here
  c.perceptual.feature_weight = 1.0
  c.schedule.plan = 'two_stage'
  c.schedule.forward_steps = 3200
  c.schedule.reverse_steps = 2200
  c.optim.forward.lr = 2e-3
  c.optim.forward.warmup_steps = 200
  c.optim.reverse.lr = 8e-3          # MNIST's tuned G (docs/experiments/mnist.md, round 4)
  c.optim.reverse.warmup_steps = 100
  c.optim.reverse.min_lr_ratio = 1.0  # no decay: G's loss still falls at the end
  c.objective.reverse_teacher = 'ema'  # G learns the F that sampling uses
  c.sample.num = 100                # 10 rows, one per class
  # Each decoder at its best FD of a 14-cell sweep on the 2026-12-06 run (docs/experiments/cifar10.md):
  c.sample.guidance = 4.25           # F's inverses: w 2..5, t 0.9..1.1
  c.sample.temperature = 1.05
  c.sample.reverse_guidance = 4.75   # G (1 NFE; trained on w < 5): w 1..4.75, t 0.8..1.1
  c.sample.reverse_temperature = 1.0
  c.log_every = 100
  c.eval_every = 1000
  c.eval_batches = 16               # 1,024 of the 10,000 test images
  c.sample_every = 2000
  c.checkpoint_every = 500
  return c
