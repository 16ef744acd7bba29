"""BiFlow on ImageNet 256 in the Stable Diffusion VAE's latent space (32x32x4).

Forward model: iTARFlow-B/2, patch 2 on 32x32x4 latents (256 tokens of 16 dims),
width 768, 8 blocks x 2 layers, ~120M params (the paper's B/2 forward size).
The latent issue completes this experiment: the VAE, the latent cache (data source
'latents', read from `data.path`), the reverse model G-B/2 and the perceptual losses.
Until then it parses and builds F at full size under jax.eval_shape, and training
stops at the data source with a clear error.
"""
from biflow_jax import config_lib


def get_config(size: str = 'B'):
  widths = {'S': (384, 6), 'B': (768, 12), 'L': (1024, 16), 'XL': (1152, 16)}
  if size not in widths:
    raise ValueError(f'configs/imagenet256.py:{size}: choose one of {sorted(widths)}')
  channels, heads = widths[size]
  c = config_lib.base_config()
  c.batch_size = 256
  c.model.image_size = 32            # latent side (256 / 8)
  c.model.in_channels = 4
  c.model.patch_size = 2
  c.model.channels = channels
  c.model.num_blocks = 8
  c.model.layers_per_block = 2 if size in ('S', 'B') else 4
  c.model.num_heads = heads
  c.model.num_classes = 1000
  c.model.clip = 3.0
  c.model.dtype = 'bfloat16'
  c.reverse.size = size
  c.data.source = 'latents'
  c.data.path = ''                   # the latent cache directory
  c.data.num_threads = 4
  c.objective.noise_sigma = 0.1      # in units of the scaled latents (scaling 0.18215)
  c.schedule.plan = 'forward_only'
  c.schedule.forward_steps = 400_000
  c.optim.forward.lr = 1e-4
  c.optim.forward.warmup_steps = 10_000
  c.optim.forward.ema_decay = 0.9999
  c.sample.num = 64
  c.sample.guidance = 2.0
  c.eval_every = 10_000
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
