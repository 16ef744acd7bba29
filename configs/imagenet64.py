"""Class-conditional BiFlow on ImageNet 64x64 (pixel space): F, then G.

  --config=configs/imagenet64.py                  F then G (the paper's two stages)
  --config=configs/imagenet64.py:forward_only     F alone (iTARFlow), no G

Data: tfds `imagenet_resized/64x64` prepared as ArrayRecord
(`tfds build imagenet_resized/64x64 --file_format=array_record`).

F (iTARFlow): TARFlow's ImageNet-64 shape: patch 4 (256 tokens of 48 dims), width 1024,
8 blocks x 8 layers (~800M params), bfloat16 compute; batch 256 and lr 1e-4 as in its
recipe; noise sigma 0.05.

G: a bidirectional ViT of F's width (1024, 16 layers, 16 heads; at least one layer per
mirror stage, B+1 = 9) learning from F's frozen trajectories with hidden alignment,
learned denoising and training-time CFG (w ~ U[0, 3], 1 NFE guided sampling). The paper's
feature term (LPIPS + ConvNeXt-V2, its largest single gain) needs downloaded weights, so
it is off here; add it with `--config.perceptual.lpips_weight=1
--config.perceptual.lpips_weights=<vgg16.pth>,<lpips vgg.pth>` (and/or convnext_*).
200k G steps (ours: the paper states no ImageNet-64 schedule). No offline classifier is
shipped for ImageNet, so `--mode=eval` uses the FID InceptionV3
(`--config.eval.inception_weights=<pt_inception-2015-12-05.pth>` or $BIFLOW_FID_WEIGHTS).
"""
from biflow_jax import config_lib


def get_config(arg: str = ''):
  if arg not in ('', 'forward_only'):
    raise ValueError(f"configs/imagenet64.py:{arg}: use no variant (F then G) or "
                     "':forward_only' (F alone)")
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
  if arg != 'forward_only':
    c.reverse.enabled = True
    c.reverse.width = 1024
    c.reverse.depth = 16
    c.reverse.num_heads = 16
    c.reverse.scan = True
    c.reverse.remat = 'dots'
    c.objective.reverse_mode = 'align'
    c.objective.denoise = 'learned'
    c.objective.label_drop_prob = 0.1
    c.objective.cfg_w_max = 3.0
    c.perceptual.precision = 'default'
    c.perceptual.dtype = 'bfloat16'
    c.schedule.plan = 'two_stage'
    c.schedule.reverse_steps = 200_000
    c.optim.reverse.lr = 1e-4
    c.optim.reverse.warmup_steps = 10_000
    c.optim.reverse.ema_decay = 0.9999
    c.sample.reverse_guidance = 2.0
  c.eval.feature_net = 'inception'
  c.log_every = 100
  c.eval_every = 10_000
  c.eval_batches = 50
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
