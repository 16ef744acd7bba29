"""The embedded default: class-conditional iTARFlow on the bundled MNIST test split.

9,000 digits train, a fixed 1,000 are held out. Sized to finish in under 20 minutes
on 2 CPU cores; samples decode with F's exact inverse (KV cache) plus score
denoising until the reverse model lands.
"""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 64
  # F: 49 tokens (7x7 patches of 4x4x1 = 16 dims), width 128, 4 blocks x 2 layers.
  c.model.image_size = 28
  c.model.in_channels = 1
  c.model.patch_size = 4
  c.model.channels = 128
  c.model.num_blocks = 4
  c.model.layers_per_block = 2
  c.model.num_heads = 4
  c.model.num_classes = 10
  c.model.clip = 3.0
  c.objective.noise_sigma = 0.1
  c.objective.label_drop_prob = 0.1
  c.schedule.plan = 'forward_only'
  c.schedule.forward_steps = 2000
  c.optim.forward.lr = 1e-3
  c.optim.forward.warmup_steps = 100
  c.optim.forward.ema_decay = 0.999
  c.sample.num = 100                 # 10 rows, one per class
  c.sample.guidance = 1.0            # w = 3 breaks some classes at this size (seen at step 2000)
  c.sample.temperature = 0.7         # z ~ N(0, 0.7^2): T = 1 gives strokes, 0.7 clear digits
  c.log_every = 100
  c.eval_every = 500
  c.eval_batches = 15                # 960 of the 1,000 held-out digits
  c.sample_every = 500
  c.checkpoint_every = 500
  return c
