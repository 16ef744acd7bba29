"""A few-second experiment on bundled MNIST for tests and smoke runs (not for quality)."""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 16
  c.model.patch_size = 7              # 16 tokens of 49 dims
  c.model.channels = 32
  c.model.num_blocks = 2
  c.model.layers_per_block = 1
  c.model.num_heads = 2
  c.data.num_train = 512
  c.data.num_heldout = 64
  c.data.num_threads = 0
  c.schedule.forward_steps = 30
  c.optim.forward.lr = 1e-3
  c.optim.forward.warmup_steps = 5
  c.sample.num = 20
  c.log_every = 10
  c.eval_every = 30
  c.eval_batches = 2
  c.sample_every = 30
  c.checkpoint_every = 10
  return c
