"""Distil a public TARFlow ImageNet-64 checkpoint into a 1-NFE generator: G alone, F frozen.

  --config=configs/tarflow_imagenet64.py          conditional, imagenet_model_4_1024_8_8_0.05.pth
  --config=configs/tarflow_imagenet64.py:cond_p2  conditional, imagenet_model_2_768_8_8_0.05.pth
  --config=configs/tarflow_imagenet64.py:uncond   unconditional, imagenet64_model_2_768_8_8_0.05.pth

Weights (never downloaded here): apple/ml-tarflow publishes the code and the training
commands (its README trains 2-768-8-8 for both ImageNet-64 settings) but not these
weights; community retrains of all three are at
huggingface.co/encoreus/Transformer_Autoregressive_Flow (github.com/encoreus/
GS-Jacobi_for_TarFlow evaluates the 4-1024 one as "Img64cond"). Each file name states
its architecture in TARFlow's own convention, <dataset>_model_<patch>_<width>_<blocks>_
<layers>_<noise>.pth. Give the file to `config.model.init_from` (a .pth needs torch;
without it, re-save it as .npz where torch is):

  python -m biflow_jax.main --config=configs/tarflow_imagenet64.py --workdir=RUN \
      --config.model.init_from=imagenet_model_4_1024_8_8_0.05.pth --config.data.data_dir=TFDS

F: 64x64x3, 8 blocks x 8 layers, head_dim 64 (TARFlow's fixed value), MLP x4, no clip,
Gaussian noise 0.05; G about F's size (the paper pairs B/2 with B/2):
  cond     4-1024: 256 tokens of 48 dims, 16 heads, 1,000 classes: F 817,636,096 params,
           G BiFlow-XL (678.3M).
  cond_p2  2-768: 1,024 tokens of 12 dims, 12 heads, 1,000 classes: F 466,286,784,
           G BiFlow-L (460.9M).
  uncond   2-768, no classes: F 460,142,784, G BiFlow-L (459.9M).
Data: tfds `imagenet_resized/64x64` (ArrayRecord; see configs/imagenet64.py), the
downsampled ImageNet64x64 the unconditional checkpoint was trained on; the conditional
ones saw Resize(64) + CenterCrop(64) of full ImageNet, close but not identical. Labels
are the sorted synset ids in both, so class i is the checkpoint's class i.

Schedule and learning rates are ours: 200k steps of batch 256 (40 epochs), AdamW 1e-4
with 10k warmup, EMA 0.9999; conditional G learns training-time CFG up to w = 4.
"""
from biflow_jax import config_lib

# variant -> (patch, width, heads, classes, G size)
VARIANTS = {
    'cond': dict(patch=4, width=1024, heads=16, classes=1000, generator='XL'),
    'cond_p2': dict(patch=2, width=768, heads=12, classes=1000, generator='L'),
    'uncond': dict(patch=2, width=768, heads=12, classes=0, generator='L'),
}


def get_config(variant: str = 'cond'):
  if variant not in VARIANTS:
    raise ValueError(f'configs/tarflow_imagenet64.py:{variant}: choose one of {sorted(VARIANTS)}')
  v = VARIANTS[variant]
  c = config_lib.base_config()
  c.batch_size = 256

  # --- F: the TARFlow checkpoint, loaded and never trained ------------------------------------
  c.model.image_size = 64
  c.model.in_channels = 3
  c.model.patch_size = v['patch']
  c.model.channels = v['width']
  c.model.num_blocks = 8
  c.model.layers_per_block = 8
  c.model.num_heads = v['heads']
  c.model.mlp_ratio = 4
  c.model.num_classes = v['classes']
  c.model.clip = None                # TARFlow has no clip on (a, b)
  c.model.dtype = 'bfloat16'
  c.model.init_from = ''             # required: the checkpoint above

  # --- G: BiFlow of about F's size -------------------------------------------------------------
  c.reverse.enabled = True
  c.reverse.size = v['generator']
  c.reverse.mlp = 'swiglu'
  c.reverse.head_mode = 'per_stage'

  c.data.source = 'tfds'
  c.data.tfds_name = 'imagenet_resized/64x64'
  c.data.train_split = 'train'
  c.data.heldout_split = 'validation'
  c.data.num_threads = 8

  c.objective.noise_sigma = 0.05     # TARFlow's --noise_std for both checkpoints
  c.objective.label_drop_prob = 0.1  # TARFlow's --drop_label (conditional)
  c.objective.reverse_mode = 'align'
  c.objective.denoise = 'learned'
  if v['classes']:
    c.objective.cfg_w_max = 4.0
    c.objective.cfg_zero_prob = 0.1

  c.schedule.plan = 'reverse_only'
  c.schedule.forward_steps = 0
  c.schedule.reverse_steps = 200_000
  c.optim.reverse.lr = 1e-4
  c.optim.reverse.warmup_steps = 10_000
  c.optim.reverse.ema_decay = 0.9999
  c.mesh.data, c.mesh.fsdp, c.mesh.param_sharding = 1, -1, 'fsdp'

  c.sample.num = 64
  c.sample.decoder = 'reverse'
  c.sample.guidance = 2.0 if v['classes'] else 0.0
  c.sample.reverse_guidance = 2.0 if v['classes'] else 0.0
  c.eval.feature_net = 'inception'
  c.eval.num_samples = 50_000
  c.eval_batches = 20
  c.log_every = 100
  c.eval_every = 10_000
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
