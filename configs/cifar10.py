"""Class-conditional BiFlow on CIFAR-10 (pixel space, 32x32x3): F, then G.

  --config=configs/cifar10.py                      tfds `cifar10` (ArrayRecord)
  --config=configs/cifar10.py:jpeg --config.data.path=/path/cifar10-jpeg.tar.gz
  --config=configs/cifar10.py:forward_only         F alone (iTARFlow), no G
  --config=configs/cifar10.py:jpeg,forward_only

Data: tfds `cifar10` (ArrayRecord, prepared with
`tfds build cifar10 --file_format=array_record` where a network is), or a JPEG folder or
tar laid out <split>/<class>/<file>.jpg.

F (iTARFlow): TARFlow's CIFAR setting scaled to one accelerator host: patch 2 (256
tokens of 12 dims), width 512, 8 blocks x 4 layers (~100M params), bfloat16 compute,
noise sigma 0.05 (TARFlow's CIFAR-10 value). Batch 256 and lr 5e-4 with a 5k-step warmup
are the usual AdamW choices for a Transformer of this width (ours, not the paper's);
200k steps is ~1,000 epochs of the 50k images.

G (the paper's plan, two stages): F trains first and is frozen; G, a bidirectional ViT of
F's width (512, 12 layers: at least one per mirror stage, B+1 = 9), learns from F's
trajectories with hidden alignment, learned denoising, training-time CFG (w ~ U[0, 3]) and
a feature term. The paper (ImageNet) uses LPIPS + ConvNeXt-V2; offline, the feature term
here is the CIFAR-10 feature net the project ships for G's loss
(`biflow_jax/assets/cifar10_feature_net.json`, never the evaluation classifier). With
downloaded weights, `--config.perceptual.convnext_weight=1 --config.perceptual.convnext_weights=...`
adds the paper's. 100k G steps (half of F's, ours: the paper states no CIFAR schedule).
`--mode=eval` scores FD and class accuracy with the shipped CIFAR-10 classifier.
The small version that runs on 2 CPU cores is configs/cifar10_small.py.
"""
from biflow_jax import config_lib

SOURCES = ('tfds', 'jpeg')


def parse_variant(arg: str, where: str) -> tuple[str, bool]:
  """'tfds' | 'jpeg', optionally ',forward_only' -> (source, forward_only)."""
  parts = [p for p in arg.split(',') if p]
  forward_only = 'forward_only' in parts
  rest = [p for p in parts if p != 'forward_only']
  source = rest[0] if rest else 'tfds'
  if len(rest) > 1 or source not in SOURCES:
    raise ValueError(f"configs/{where}:{arg}: use ':tfds' (default) or ':jpeg', optionally "
                     "followed by ',forward_only' (F alone)")
  return source, forward_only


def get_config(arg: str = 'tfds'):
  source, forward_only = parse_variant(arg, 'cifar10.py')
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
  # Accelerator paths (models/layers.py): fused attention, scanned blocks and layers,
  # per-layer remat keeping the weight matmuls.
  c.model.attention = 'auto'
  c.model.scan = True
  c.model.remat = 'dots'
  c.data.name = 'cifar10'            # its shipped classifier and feature net (assets/__init__.py)
  if source == 'tfds':
    c.data.source = 'tfds'
    c.data.tfds_name = 'cifar10'
  else:
    c.data.source = 'jpeg'
    c.data.path = ''                 # required: --config.data.path=...
  c.data.train_split = 'train'
  c.data.heldout_split = 'test'
  c.objective.noise_sigma = 0.05
  c.schedule.forward_steps = 200_000
  c.optim.forward.lr = 5e-4
  c.optim.forward.warmup_steps = 5_000
  c.optim.forward.ema_decay = 0.9999
  c.sample.num = 100
  c.sample.guidance = 1.0
  if not forward_only:
    c.reverse.enabled = True
    c.reverse.width = 512
    c.reverse.depth = 12
    c.reverse.num_heads = 8
    c.reverse.scan = True
    c.reverse.remat = 'dots'
    c.objective.reverse_mode = 'align'
    c.objective.denoise = 'learned'
    c.objective.label_drop_prob = 0.1
    c.objective.cfg_w_max = 3.0
    c.perceptual.feature_weight = 1.0
    c.perceptual.precision = 'default'
    c.perceptual.dtype = 'bfloat16'
    c.schedule.plan = 'two_stage'
    c.schedule.reverse_steps = 100_000
    c.optim.reverse.lr = 5e-4
    c.optim.reverse.warmup_steps = 5_000
    c.optim.reverse.ema_decay = 0.9999
    c.sample.reverse_guidance = 1.0
  c.log_every = 100
  c.eval_every = 5_000
  c.eval_batches = 39                # 9,984 of the 10,000 test images
  c.sample_every = 5_000
  c.checkpoint_every = 2_000
  return c
