"""Class-conditional iTARFlow on ImageNet 64x64 (pixel space).

Data: tfds `imagenet_resized/64x64` prepared as ArrayRecord
(`tfds build imagenet_resized/64x64 --file_format=array_record`).
TARFlow's ImageNet-64 shape: patch 4 (256 tokens of 48 dims), width 1024, 8 blocks x
8 layers (~800M params), bfloat16 compute; batch 256 and lr 1e-4 as in its recipe.
"""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 256
  c.model.image_size = 64
  c.model.in_channels = 3
  c.model.patch_size = 4
  c.model.channels = 1024
  c.model.num_blocks = 8
  c.model.layers_per_block = 8
  c.model.num_heads = 16
  c.model.num_classes = 1000
  c.model.clip = 3.0
  c.model.dtype = 'bfloat16'
  # Accelerator paths (models/layers.py): fused attention (cuDNN flash on a GPU in bf16),
  # scanned blocks and layers (compile time flat in depth, stacked params), and per-layer
  # remat keeping the weight matmuls ('dots') to cut activation memory (unmeasured on a chip).
  c.model.attention = 'auto'
  c.model.scan = True
  c.model.remat = 'dots'
  c.data.source = 'tfds'
  c.data.tfds_name = 'imagenet_resized/64x64'
  c.data.train_split = 'train'
  c.data.heldout_split = 'validation'
  c.objective.noise_sigma = 0.05
  c.schedule.forward_steps = 1_000_000
  c.optim.forward.lr = 1e-4
  c.optim.forward.warmup_steps = 10_000
  c.optim.forward.ema_decay = 0.9999
  c.sample.num = 64
  c.sample.guidance = 2.0
  c.log_every = 100
  c.eval_every = 10_000
  c.eval_batches = 50
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
