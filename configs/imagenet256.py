"""BiFlow on ImageNet 256 in the Stable Diffusion VAE's latent space (32x32x4): the paper's
headline experiment (BiFlow-B/2, FID 2.39 in 1 NFE; docs/method.md §7).

  --config=configs/imagenet256.py      B/2 (default)
  --config=configs/imagenet256.py:S    S/2, a cheaper ablation scale
  --config=configs/imagenet256.py:XL   XL/2, F and G with FSDP over all devices

Before training (once, on the machines that will train):
  1. Prepare imagenet2012 with tfds in ArrayRecord format (needs the manual download):
       tfds build imagenet2012 --manual_dir=<archives> --data_dir=<tfds> --file_format=array_record
  2. Encode it: python -m biflow_jax.tools.cache_latents --config=configs/imagenet256.py
       --config.vae.weights=<sd-vae-ft-ema diffusion_pytorch_model.safetensors>
       --config.data.data_dir=<tfds> --out=<cache>            (and --split=validation)
  3. Train: python -m biflow_jax.main --config=configs/imagenet256.py --workdir=<run>
       --config.data.path=<cache> --config.vae.weights=<...>
       --config.perceptual.lpips_weights=<vgg16.pth>,<lpips vgg.pth>
       --config.perceptual.convnext_weights=<convnextv2_base model.safetensors>

Sizes (parameters from jax.eval_shape; tests/test_imagenet256.py keeps them honest):
  F = iTARFlow-X/2: patch 2 -> 256 tokens of 16 dims, 8 blocks; B: width 768, 2 layers
      per block (~121M, the paper's ~120M); XL: width 1152, 4 layers per block.
  G = BiFlow-X/2: the bidirectional ViT of models/generator.py (B ~132M, the paper's 133M),
      8 mirror stages + a denoise stage, learnable heads (hidden alignment).
The paper leaves batch, learning rates and epochs unstated where noted below; those
values are ours, chosen as explained, and are config values to sweep.
"""
from biflow_jax import config_lib

IMAGENET_TRAIN_IMAGES = 1_281_167

# Width, heads and F's layers per block for each scale.
SCALES = {
    'S': dict(width=384, heads=6, layers_per_block=2),
    'B': dict(width=768, heads=12, layers_per_block=2),
    'XL': dict(width=1152, heads=16, layers_per_block=4),
}


def get_config(size: str = 'B'):
  if size not in SCALES:
    raise ValueError(f'configs/imagenet256.py:{size}: choose one of {sorted(SCALES)}')
  scale = SCALES[size]
  c = config_lib.base_config()

  # Batch 256 is the DiT/SiT standard for ImageNet 256 latents, and what the paper's
  # per-image timings assume; learning rates below are tuned to it.
  c.batch_size = 256
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // c.batch_size  # 5004 (mirrors are augmentation)

  # --- data: the latent cache (see tools/cache_latents.py) ------------------------------
  c.data.source = 'latents'
  c.data.path = ''                   # required: the cache_latents --out directory
  c.data.tfds_name = 'imagenet2012'  # what cache_latents encodes
  c.data.train_split = 'train'
  c.data.heldout_split = 'validation'
  c.data.num_threads = 8

  # --- SD VAE: ft-EMA weights, 256x256x3 <-> 32x32x4, latents scaled by 0.18215 ---------
  c.vae.weights = ''                 # required: diffusers sd-vae-ft-ema (.safetensors)
  c.vae.image_size = 256
  c.vae.dtype = 'bfloat16'           # frozen decoder in the loss: bf16 halves its cost
  c.vae.precision = 'default'        # and the backend's fast matmuls (TF32 / bf16 passes)

  # --- F: iTARFlow-X/2 ------------------------------------------------------------------
  c.model.image_size = 32            # latent side (256 / 8)
  c.model.in_channels = 4
  c.model.patch_size = 2             # 256 tokens of 16 dims
  c.model.channels = scale['width']
  c.model.num_blocks = 8
  c.model.layers_per_block = scale['layers_per_block']
  c.model.num_heads = scale['heads']
  c.model.num_classes = 1000
  c.model.clip = 3.0                 # forward norm control
  c.model.dtype = 'bfloat16'
  # Accelerator paths (models/layers.py): fused attention (cuDNN flash on a GPU in bf16),
  # scanned blocks and layers (compile time flat in depth, stacked params), and per-layer
  # remat keeping the weight matmuls ('dots') to cut activation memory (unmeasured on a chip).
  c.model.attention = 'auto'
  c.model.scan = True
  c.model.remat = 'dots'

  # --- G: BiFlow-X/2 ----------------------------------------------------------------------
  c.reverse.enabled = True
  c.reverse.size = size
  c.reverse.mlp = 'swiglu'
  c.reverse.head_mode = 'per_stage'  # hidden alignment
  c.reverse.scan = True              # attention follows model.attention
  c.reverse.remat = 'dots'

  # --- objectives ------------------------------------------------------------------------
  c.objective.noise_sigma = 0.1      # in units of the scaled latents (std ~1)
  c.objective.label_drop_prob = 0.1  # null class for guidance
  c.objective.reverse_target = 'trajectory'
  c.objective.reverse_mode = 'align'
  c.objective.denoise = 'learned'
  c.objective.norm_control = True
  # Adaptive weighting w = sg((D + eps)^-p) per term; p = 1 turns each term into a
  # roughly scale-free log-like loss, so MSE, LPIPS and ConvNeXt need no hand balancing.
  c.objective.adaptive_p = 1.0
  c.objective.adaptive_eps = 1e-3
  c.objective.cfg_w_max = 4.0        # training-time CFG: G learns every w in [0, 4]
  c.objective.cfg_zero_prob = 0.1

  # Perceptual terms on the VAE-decoded image of G's output (paper: MSE 31.88 ->
  # +LPIPS 14.15 -> +LPIPS+ConvNeXt 2.46).
  c.perceptual.lpips_weight = 1.0
  c.perceptual.lpips_weights = ''    # required: '<vgg16-397923af.pth>,<lpips v0.1 vgg.pth>'
  c.perceptual.convnext_weight = 1.0
  c.perceptual.convnext_weights = ''  # required: timm convnextv2_base checkpoint
  c.perceptual.convnext_variant = 'base'
  c.perceptual.convnext_resize = 224
  c.perceptual.precision = 'default'  # frozen loss nets: fast matmuls in bfloat16 (the
  c.perceptual.dtype = 'bfloat16'     # parity tests pin highest/float32; docs/method.md §4.11)

  # --- schedule: F by likelihood, then G with F frozen (the paper's two stages) -----------
  # Epoch budgets are ours: F gets the larger share, as flows are slow to converge in
  # NLL; G distils a fixed F and converges faster.
  c.schedule.plan = 'two_stage'
  c.schedule.forward_steps = 200 * steps_per_epoch
  c.schedule.reverse_steps = 100 * steps_per_epoch

  c.optim.forward.lr = 1e-4          # TARFlow-style rate for batch 256 with AdamW
  c.optim.forward.warmup_steps = 10_000
  c.optim.forward.weight_decay = 1e-4
  c.optim.forward.ema_decay = 0.9999
  c.optim.reverse.lr = 1e-4
  c.optim.reverse.warmup_steps = 10_000
  c.optim.reverse.ema_decay = 0.9999

  # --- scale-out: B fits replicated on a 16 GB+ chip; XL shards params over all devices --
  if size == 'XL':
    c.mesh.data, c.mesh.fsdp, c.mesh.param_sharding = 1, -1, 'fsdp'

  # --- sampling and evaluation ------------------------------------------------------------
  c.sample.num = 64
  c.sample.decoder = 'reverse'
  c.sample.guidance = 2.0            # F's exact inverse guidance (baseline grids)
  c.sample.reverse_guidance = 2.0    # w given to G (<= cfg_w_max)
  c.sample.temperature = 1.0
  c.eval.feature_net = 'inception'
  c.eval.num_samples = 50_000        # FID-50K
  c.eval_batches = 20                # held-out NLL on 5,120 validation latents
  c.log_every = 100
  c.eval_every = 10_000
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
