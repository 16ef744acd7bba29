"""Distil TARFlow's public AFHQ-256 checkpoint into a 1-NFE generator: G alone, F frozen.

Weights (never downloaded here): `afhq_model_8_768_8_8_0.07.pth`, linked from
apple/ml-tarflow's README (https://ml-site.cdn-apple.com/models/tarflow/afhq256/
afhq_model_8_768_8_8_0.07.pth); a community retrain of the same architecture is at
huggingface.co/encoreus/Transformer_Autoregressive_Flow. Give its path to
`config.model.init_from` (a .pth needs torch; without it, re-save it as .npz where torch
is, as the error message shows):

  python -m biflow_jax.main --config=configs/tarflow_afhq256.py --workdir=RUN \
      --config.model.init_from=afhq_model_8_768_8_8_0.07.pth --config.data.path=AFHQ256

F is TARFlow "8-768-8-8-0.07" (patch-width-blocks-layers-noise), as its README trains it:
256x256x3, patch 8 -> 1,024 tokens of 192 dims, width 768, 8 blocks x 8 layers, 12
heads (TARFlow's fixed head_dim 64), MLP x4, 3 classes, no clip, Gaussian noise 0.07:
463,481,856 parameters (init_from checks every one of these against the checkpoint).
G is BiFlow-L (461.7M), about F's size as in the paper's B/2 pairing.

Data: AFHQ (e.g. Kaggle's afhq-512) resized to 256x256 as TARFlow's loader does
(Resize(256) + CenterCrop(256)), in a folder or tar laid out <split>/<class>/<file>.jpg:
train/{cat,dog,wild} and val/{cat,dog,wild}. Labels are the sorted folder names, as in
TARFlow's torchvision ImageFolder, so class i is the checkpoint's class i.

Schedule and learning rate are ours (the paper does not train G on AFHQ): 100k steps of
batch 256 (about 1,750 epochs of AFHQ's ~14.6k training images; TARFlow trained F for
4,000), AdamW 1e-4 with 5k warmup, EMA 0.9999, training-time CFG up to w = 4.
"""
from biflow_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.batch_size = 256

  # --- F: TARFlow 8-768-8-8, loaded from the checkpoint and never trained -----------------
  c.model.image_size = 256
  c.model.in_channels = 3
  c.model.patch_size = 8
  c.model.channels = 768
  c.model.num_blocks = 8
  c.model.layers_per_block = 8
  c.model.num_heads = 12
  c.model.mlp_ratio = 4
  c.model.num_classes = 3
  c.model.clip = None                # TARFlow has no clip on (a, b)
  c.model.dtype = 'bfloat16'         # TARFlow trained under bf16 autocast too
  c.model.init_from = ''             # required: the .pth (or .npz) above

  # --- G: BiFlow-L, 8 mirror stages + a denoise stage, hidden alignment -------------------
  c.reverse.enabled = True
  c.reverse.size = 'L'
  c.reverse.mlp = 'swiglu'
  c.reverse.head_mode = 'per_stage'

  # --- data: AFHQ at 256, JPEG folder or tar ----------------------------------------------
  c.data.source = 'jpeg'
  c.data.path = ''                   # required: <path>/train/<class>/*.jpg, <path>/val/...
  c.data.train_split = 'train'
  c.data.heldout_split = 'val'
  c.data.num_threads = 8

  # --- objective: F's own noise level; G learns the clean image -----------------------------
  c.objective.noise_sigma = 0.07     # TARFlow's --noise_std for this checkpoint
  c.objective.label_drop_prob = 0.1  # TARFlow's --drop_label
  c.objective.reverse_mode = 'align'
  c.objective.denoise = 'learned'
  c.objective.cfg_w_max = 4.0
  c.objective.cfg_zero_prob = 0.1

  # --- schedule: G alone from the loaded F ---------------------------------------------------
  c.schedule.plan = 'reverse_only'
  c.schedule.forward_steps = 0
  c.schedule.reverse_steps = 100_000
  c.optim.reverse.lr = 1e-4
  c.optim.reverse.warmup_steps = 5_000
  c.optim.reverse.ema_decay = 0.9999

  # F and G are ~0.46B parameters each: shard params, moments and EMA over every device.
  c.mesh.data, c.mesh.fsdp, c.mesh.param_sharding = 1, -1, 'fsdp'

  # --- sampling and evaluation ---------------------------------------------------------------
  c.sample.num = 16                  # F's exact inverse in the grids is 8 x 1,023 serial steps
  c.sample.decoder = 'reverse'
  c.sample.guidance = 2.0            # F's inverses (baseline grids)
  c.sample.reverse_guidance = 2.0    # G's w (<= cfg_w_max)
  c.eval.feature_net = 'inception'
  c.eval.num_samples = 15_000
  c.eval_batches = 5
  c.log_every = 100
  c.eval_every = 10_000
  c.sample_every = 10_000
  c.checkpoint_every = 5_000
  return c
