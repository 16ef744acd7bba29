"""Class-conditional iTARFlow on CIFAR-10 (pixel space, 32x32x3).

Data: tfds `cifar10` (ArrayRecord, prepared with
`tfds build cifar10 --file_format=array_record` where a network is). Without tfds,
`--config=configs/cifar10.py:jpeg --config.data.path=/path/cifar10-jpeg.tar.gz` reads a
JPEG folder or tar laid out <split>/<class>/<file>.jpg.

Model sizes follow TARFlow's CIFAR setting scaled to one accelerator host: patch 2
(256 tokens of 12 dims), width 512, 8 blocks x 4 layers (~100M params), bfloat16
compute. Batch 256 and lr 5e-4 with a 5k-step warmup are the usual AdamW choices
for a Transformer of this width; 200k steps is ~1,000 epochs of the 50k images.
"""
from biflow_jax import config_lib


def get_config(source: str = 'tfds'):
  c = config_lib.base_config()
  c.batch_size = 256
  c.model.image_size = 32
  c.model.in_channels = 3
  c.model.patch_size = 2
  c.model.channels = 512
  c.model.num_blocks = 8
  c.model.layers_per_block = 4
  c.model.num_heads = 8
  c.model.num_classes = 10
  c.model.clip = 3.0
  c.model.dtype = 'bfloat16'
  if source == 'tfds':
    c.data.source = 'tfds'
    c.data.tfds_name = 'cifar10'
  elif source == 'jpeg':
    c.data.source = 'jpeg'
    c.data.path = ''                 # required: --config.data.path=...
  else:
    raise ValueError(f"configs/cifar10.py:{source}: use ':tfds' (default) or ':jpeg'")
  c.data.train_split = 'train'
  c.data.heldout_split = 'test'
  c.objective.noise_sigma = 0.05
  c.schedule.forward_steps = 200_000
  c.optim.forward.lr = 5e-4
  c.optim.forward.warmup_steps = 5_000
  c.optim.forward.ema_decay = 0.9999
  c.sample.num = 100
  c.sample.guidance = 1.0
  c.log_every = 100
  c.eval_every = 5_000
  c.eval_batches = 39                # 9,984 of the 10,000 test images
  c.sample_every = 5_000
  c.checkpoint_every = 2_000
  return c
