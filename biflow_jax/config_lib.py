"""The experiment schema: every hyper-parameter a run has, with its default.

Each file in `configs/` starts from `base_config()` and changes what its experiment
changes, so a config reads like an experiment description and `--config.a.b=v`
can override any field (ml_collections rejects unknown ones).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import ml_collections

from biflow_jax.data import image_files, input_pipeline
from biflow_jax.evaluation import features
from biflow_jax.inference import decoders, sampling
from biflow_jax.models import base_density, flow, generator, layers
from biflow_jax.objective import biflow, phases
from biflow_jax.runtime import parallel


def optimizer_group(lr: float = 3e-4, warmup_steps: int = 200) -> ml_collections.ConfigDict:
  """AdamW (or Muon) + warmup-cosine + clipping for one parameter group."""
  return ml_collections.ConfigDict(dict(
      # 'adamw', or 'muon': the hidden matrices (2-D 'kernel' leaves) step along their
      # orthogonalised momentum, scaled to AdamW's update RMS so lr keeps its meaning
      # (Moonlight: Liu et al. 2025); every other leaf takes Adam, undecayed (training/optim.py).
      algorithm='adamw',
      muon_beta=0.95,        # Muon's momentum (Nesterov); AdamW's leaves use b1, b2
      lr=lr,                 # peak learning rate after warmup
      warmup_steps=warmup_steps,
      min_lr_ratio=0.05,     # cosine decays to lr * min_lr_ratio at the group's last step
      weight_decay=1e-4,     # decoupled; applied to matrices only (not biases, norms, embeddings)
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      grad_clip=1.0,         # global norm over the group's own gradients
      ema_decay=0.999,
      # The EMA's warm-up c: at the group's update n the decay is min(ema_decay,
      # (1 + n) / (c + n)), so until ema_decay binds the EMA weighs update k's params about as
      # k**(c - 2): EDM2's power-function EMA with gamma = c - 2 (Karras et al. 2024).
      # Larger c: a shorter average (relative width sigma_rel 0.09 at c = 10, 0.19 at c = 4).
      ema_warmup=10.0,
      # Post-hoc EMA (EDM2; training/posthoc_ema.py): power EMAs of these relative widths
      # kept beside the params and written every posthoc_every steps (0: with each
      # checkpoint) to WORKDIR/posthoc_ema/<group>/, from which `tools/sweep
      # --ema_sigma_rel=S` rebuilds the average of any width. () is off.
      posthoc_sigma_rels=(),
      posthoc_every=0,
  ))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # global batch; each JAX process loads batch_size / process_count

  # Forward flow F (iTARFlow): data -> noise by maximum likelihood.
  c.model = ml_collections.ConfigDict(dict(
      image_size=28,
      image_width=0,         # 0 = square (image_size x image_size); else H = image_size, W = this
                             # (market windows: (days, 1, assets), one token per day)
      in_channels=1,
      patch_size=4,
      channels=128,          # Transformer width d
      num_blocks=4,          # flow blocks B
      layers_per_block=2,    # causal Transformer layers L per block
      num_heads=4,
      mlp_ratio=4,
      num_classes=10,        # 0 = unconditional
      clip=3.0,              # norm control: a, b clipped to [-clip, clip]; None = off
      clip_form='hard',      # hard: jnp.clip (the paper) | tanh: clip * tanh(u / clip) (STARFlow)
      base='gaussian',       # density of z: gaussian | student_t (heavy tails; models/base_density.py)
      nu=5.0,                # student_t: degrees of freedom per dimension
      prior_var=False,       # F ends with z / sqrt(var), a fixed (T, D) prior variance: TARFlow's
                             # `var` buffer, set by init_from (never trained)
      dtype='float32',       # compute dtype; params stay float32 ('bfloat16' on TPU/GPU)
      # Speed on accelerators (models/layers.py; off = the original unrolled, hand-written path):
      attention='einsum',    # einsum (hand-written) | xla | cudnn | auto: jax.nn.dot_product_attention
      scan=False,            # nn.scan over blocks and layers: compile time flat in depth; params
                             # stacked (models/layout.py converts either layout's checkpoints)
      remat='none',          # none | full | dots | dots_all: per-layer rematerialisation policy
      # Start F (params and EMA) from a trained flow instead of config.seed: a TARFlow state
      # dict (.pth with torch, or .npz/.safetensors under PyTorch names), a biflow_jax workdir
      # (its latest checkpoint) or one checkpoint step directory (DIR/checkpoints/<step>). Its
      # architecture is checked against this group before anything runs. Only a fresh
      # workdir uses it; a workdir with its own checkpoint resumes from that (training/init_from.py).
      init_from='',
  ))

  # Reverse model G: a bidirectional ViT, B stages mirroring F's blocks + a denoise stage.
  c.reverse = ml_collections.ConfigDict(dict(
      enabled=False,
      size='tiny',            # tiny | S | B | L | XL -> (width, depth, heads), generator.SIZES
      width=0,                # 0 = from size
      depth=0,                # 0 = from size (raised to model.num_blocks + 1: a layer per stage)
      num_heads=0,            # 0 = from size
      mlp='swiglu',           # swiglu | gelu
      mlp_ratio=4,            # GELU hidden = ratio * width; SwiGLU 2/3 of that (same params)
      head_mode='per_stage',  # per_stage: learnable phi_i (hidden alignment) | shared: one head
                              # for every stage (hidden distillation, objective.reverse_mode='hidden')
      qk_norm=True,           # RMS-normalise queries and keys
      dtype='',               # compute dtype; '' = model.dtype
      attention='',           # '' = model.attention
      scan=False,             # nn.scan over G's layers (stage outputs kept at stage boundaries)
      remat='none',           # as model.remat
      skip='none',            # none | add (z + head) | affine (z * exp(s) + b from the head): how
                              # G's output uses z (heavy-tailed data: generator.ReverseModel)
      w_embed_scale=generator.W_EMBED_SCALE,  # G's Fourier features of the guidance w use angular frequencies
                              # from this down to it / 10,000 per unit of w (1000: DiT's timestep
                              # embedding of 1000 w; generator.fourier_features)
      unguided_embed=False,   # a learned code added to G's conditioning where w = 0 exactly, so
                              # unguided G keeps its own code under a smooth w embedding
  ))

  c.data = ml_collections.ConfigDict(dict(
      source='bundled_mnist',   # bundled_mnist | tfds | jpeg
      name='',                  # the dataset, picking its shipped nets (assets/__init__.py: evaluation
                                # classifier, G's feature net); '' = mnist for bundled_mnist,
                                # the tfds name for tfds
      tfds_name='',             # e.g. 'cifar10', 'imagenet_resized/64x64'
      train_split='train',
      heldout_split='test',
      data_dir='',              # tfds data_dir ('' = tfds default)
      path='',                  # jpeg: a folder or .tar(.gz) with <split>/<class>/<file>.jpg (or .png)
      resize='none',            # jpeg: none (images must be model-sized) | centre_crop (ADM: box-halve,
                                # bicubic, centre crop; any size); any PIL mode -> model.in_channels
      skip_bad_images=False,    # jpeg: skip (and count in the log) files that cannot be decoded
      num_train=9000,           # bundled_mnist: first part of a fixed permutation
      num_heldout=1000,         # bundled_mnist: the fixed remainder
      seed=0,                   # shuffle seed (the bundled train/held-out split ignores it)
      num_threads=2,            # grain prefetch threads (0 = inline), each making whole batches
  ))

  # Stable Diffusion VAE (AutoencoderKL) for latent-space experiments (data.source='latents'):
  # the latent cache is encoded with it and G's output is decoded by it for perceptual losses.
  c.vae = ml_collections.ConfigDict(dict(
      weights='',               # diffusers AutoencoderKL weights (.safetensors / .bin / .npz)
      in_channels=3,
      block_out_channels=(128, 256, 512, 512),
      layers_per_block=2,
      latent_channels=4,
      norm_num_groups=32,
      scaling_factor=0.18215,   # F and G see latents * scaling_factor (unit-ish variance)
      image_size=256,           # pixel side the cache is encoded at (centre crop)
      dtype='float32',          # compute dtype of encoder/decoder
      precision='highest',      # conv/matmul precision: highest (true float32 on GPU/TPU) | high |
                                # default (TF32 on GPU, bf16 passes on TPU: fast)
  ))

  # Perceptual terms on G's decoded image (reverse loss), each adaptively weighted.
  c.perceptual = ml_collections.ConfigDict(dict(
      lpips_weight=0.0,         # 0 = off
      lpips_weights='',         # LPIPS-VGG weights (see biflow_jax/objective/perceptual.py for the files)
      convnext_weight=0.0,      # 0 = off
      convnext_weights='',      # timm ConvNeXt-V2 checkpoint (.safetensors / .bin / .npz)
      convnext_variant='base',  # atto | femto | pico | nano | tiny | base | large | huge
      convnext_resize=224,      # images are resized to this side before ConvNeXt
      # A small feature net the project trains on the training split (pixel data such as
      # MNIST; objective/feature_term.py), never the evaluation classifier.
      feature_weight=0.0,       # 0 = off
      feature_net='',           # asset prefix (<prefix>.npz/.json); '' = the dataset's shipped one
      # Numerics of these frozen nets (LPIPS, ConvNeXt, the feature net): conv/matmul precision
      # (highest | high | default) and compute dtype (params stay float32; norms and the
      # distances run in float32). highest/float32 reproduces the reference numbers; the
      # accelerator configs choose default/bfloat16 (docs/method.md §4.11).
      precision='highest',
      dtype='float32',
  ))

  c.objective = ml_collections.ConfigDict(dict(
      noise_sigma=0.1,          # F models x~ = x + sigma * eps (x in [-1, 1])
      label_drop_prob=0.1,      # label -> -1 (the null class), so guidance exists
      nll_weight=1.0,
      reverse_weight=1.0,       # lambda in L = L_NLL + lambda * L_reverse
      # What G learns from (docs/method.md §4):
      reverse_target='trajectory',  # trajectory (pairs z = F(x)) | inverse_matching (fresh z)
      reverse_teacher='params', # the F whose trajectories G learns: params | ema (the F sampling uses)
      prior_fraction=0.0,       # rows of each G batch that are prior pairs: z ~ N(0, I), x~ = F^-1(z)
                                # (exact inverse), aligned like data (docs/method.md §4.13); 0 = off
      prior_denoise='score',    # clean target of a prior row: score (Tweedie with F's score) | none
      reverse_mode='align',     # align (hidden alignment) | hidden (hidden distillation) | naive
      denoise='learned',        # learned (G maps z to clean x) | score | none
      denoise_target='clean',   # learned denoising's end target for data rows: clean (x) |
                                # score (F's Tweedie estimate of x from x~; a grad of F per step)
      norm_control=True,        # normalise each trajectory state before the distance
      adaptive_p=0.0,           # adaptive weight D * sg((D + eps)^-p); 0 = plain MSE
      adaptive_eps=1e-3,
      token_weighting=False,    # weight tokens by their own detached error
      cfg_w_max=0.0,            # training-time CFG: w ~ U[0, cfg_w_max] per example (0 = off)
      cfg_zero_prob=0.25,       # fraction of examples trained at w = 0
      cfg_guided_fraction=1.0,  # rows of each G batch that may get w > 0; the others train at
                                # w = 0, so the unconditional pass runs on these rows only
      inverse_tol=1e-3,         # inverse matching: F^-1(z) by the fixed-point inverse
      inverse_max_iters=0,      # 0 = number of tokens (exact)
      inverse_groups=1,
  ))

  # Phase plan: forward_only | two_stage | progressive | reverse_only (G alone from a trained
  # F given by model.init_from) -- see phases.build_phase_plan.
  c.schedule = ml_collections.ConfigDict(dict(
      plan='forward_only',
      forward_steps=2000,       # F alone
      joint_steps=0,            # progressive: F and G together
      reverse_steps=0,          # G alone, F frozen
      reverse_batch_size=0,     # examples per step while G alone trains (the first rows of each
                                # batch); 0 = batch_size
  ))

  c.optim = ml_collections.ConfigDict(dict(
      forward=optimizer_group(),
      reverse=optimizer_group(),
  ))

  c.sample = ml_collections.ConfigDict(dict(
      num=100,                  # images in a grid (one row per class when conditional)
      decoder='exact',          # exact | fixed_point | reverse
      guidance=0.0,
      reverse_guidance=-1.0,    # w given to G; -1 = same as guidance (G knows w <= objective.cfg_w_max)
      reverse_cfg='input',      # how G is guided: input (w is G's input: training-time CFG, 1 NFE) |
                                # two_pass (ordinary CFG, 2 NFE: G(z|c) + w (G(z|c) - G(z|null)) at
                                # G's input w = 0; for a G trained with label dropout, no cfg_w_max)
      temperature=1.0,
      reverse_temperature=-1.0, # temperature of G's noise; -1 = same as temperature
      denoise='score',          # score | none (the reverse model learns its own)
      fixed_point_tol=1e-3,     # stop a block's Jacobi sweeps at this max-abs update
      fixed_point_max_iters=0,  # 0 = number of tokens (exact by causality)
      fixed_point_groups=1,     # 1 = Jacobi; G > 1 = Gauss-Seidel over G groups
  ))

  c.eval = ml_collections.ConfigDict(dict(
      decoders='',              # comma-separated subset of reverse,exact,fixed_point; '' = all available
      num_samples=1000,         # class-balanced samples per decoder
      batch=250,
      feature_net='classifier', # classifier (the dataset's own, bundled for MNIST) | inception
      classifier_path='',       # asset prefix; '' = the dataset's shipped one (assets/__init__.py)
      inception_weights='',     # pytorch-fid weights (.pth or .npz); '' = $BIFLOW_FID_WEIGHTS
      pr_k=3,                   # k of the k-NN manifolds for precision/recall
      is_splits=10,             # Inception Score parts (held-out protocol; the ADM suite uses parts of 5,000)
      floor_samples=-1,         # real training images in the floor row; -1 = num_samples, 0 = no floor row
      reference='',             # ADM-suite reference batch .npz (arr_0 images and/or mu, sigma, mu_s,
                                # sigma_s): score FID/sFID/IS/precision/recall as that suite does, with
                                # the FID InceptionV3 (inception_weights); '' = against the held-out split
      save_samples=False,       # also write each decoder's samples to DIR/eval_samples/*.npz in the
                                # suite's format (arr_0 uint8 RGB, arr_1 labels)
  ))

  # --mode=likelihood (modes/likelihood.py): bits/dim of a user's images under F's EMA weights.
  c.likelihood = ml_collections.ConfigDict(dict(
      input='',                 # a folder of .png/.jpg (sized per data.resize) or an .npz (arr_0 or
                                # images: uint8 NHWC; labels from arr_1 or labels when present)
      label=-1,                 # class given to F for images without labels; -1 = none (null class)
      batch=100,                # images per F pass
      name='',                  # output DIR/likelihood/<name>.csv/.json; '' = the input's name
  ))

  # --mode=edit (modes/edit.py): noise-space editing with F and G.
  c.edit = ml_collections.ConfigDict(dict(
      task='inpaint',           # inpaint | interpolate | class_swap
      mask='left',              # inpaint: region regenerated: left | right | top | bottom | centre | a PNG
                                # (white = regenerate)
      between='images',         # interpolate: images (F of image pairs 0-1, 2-3, ...) | noise
      steps=8,                  # interpolate: frames per row
      num=8,                    # images edited (or noise pairs interpolated)
      input='',                 # '' = held-out images; or a folder / .npz as likelihood.input
      label=-1,                 # class of images without labels (and of noise interpolations)
  ))

  # --mode=export (modes/export.py): samplers as jax.export artifacts with their weights.
  c.export = ml_collections.ConfigDict(dict(
      decoders='',              # comma-separated subset of reverse,exact,fixed_point; '' = reverse
                                # (when G exists) and exact
      platforms='',             # comma-separated jax.export platforms (cpu, cuda, rocm, tpu; not 'gpu');
                                # '' = this machine's (jax.export.default_export_platform)
  ))

  c.bench = ml_collections.ConfigDict(dict(
      batch=0,                  # images per decoder call; 0 = sample.num
      repeats=5,                # median over this many timed calls (after compile)
      peak_tflops=0.0,          # chip peak for MFU; 0 = from the device kind (TPU/A100/H100/H200)
  ))

  # Device mesh (biflow_jax/runtime/parallel.py): the batch is split over data x fsdp devices.
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                    # data-parallel size; -1 = every device not used by fsdp
      fsdp=1,                     # size of the axis that shards parameters (with param_sharding='fsdp')
      param_sharding='replicated',  # replicated | fsdp (params, Adam moments and EMA split over 'fsdp')
      fsdp_min_size=2 ** 16,      # arrays with fewer elements stay replicated
  ))

  c.max_consecutive_skips = 20  # non-finite steps in a row before the job stops

  c.log_every = 50
  c.sample_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_every = 1000
  c.eval_batches = 8           # held-out batches for bits/dim at each eval
  return c


# Every enumerated field, with the module that owns its choices (one source of truth).
_CHOICES = {
    'data.source': input_pipeline.SOURCES,
    'data.resize': image_files.RESIZE_MODES,
    'schedule.plan': phases.PLANS,
    'objective.reverse_target': biflow.REVERSE_TARGETS,
    'objective.reverse_teacher': biflow.REVERSE_TEACHERS,
    'objective.prior_denoise': biflow.PRIOR_DENOISE,
    'objective.reverse_mode': biflow.REVERSE_MODES,
    'objective.denoise': biflow.DENOISE_MODES,
    'objective.denoise_target': biflow.DENOISE_TARGETS,
    'sample.decoder': sampling.DECODERS,
    'sample.denoise': sampling.DENOISERS,
    'sample.reverse_cfg': sampling.REVERSE_CFG,
    'model.base': base_density.BASES,
    'model.clip_form': flow.CLIP_FORMS,
    'model.dtype': tuple(layers.DTYPES),
    'model.attention': layers.ATTENTION_IMPLS,
    'model.remat': layers.REMAT_POLICIES,
    'vae.dtype': tuple(layers.DTYPES),
    'vae.precision': tuple(layers.PRECISIONS),
    'perceptual.dtype': tuple(layers.DTYPES),
    'perceptual.precision': tuple(layers.PRECISIONS),
    'reverse.attention': ('',) + layers.ATTENTION_IMPLS,
    'reverse.remat': layers.REMAT_POLICIES,
    'eval.feature_net': features.FEATURE_NETS,
    'reverse.size': tuple(generator.SIZES),
    'reverse.mlp': generator.MLP_KINDS,
    'reverse.head_mode': generator.HEAD_MODES,
    'reverse.skip': generator.SKIPS,
    'mesh.param_sharding': parallel.PARAM_SHARDINGS,
}
_POSITIVE = ('batch_size', 'model.image_size', 'model.in_channels', 'model.patch_size',
             'model.channels', 'model.num_blocks', 'model.layers_per_block', 'model.num_heads',
             'model.mlp_ratio', 'log_every', 'sample_every', 'checkpoint_every', 'eval_every',
             'keep_checkpoints', 'sample.num', 'max_consecutive_skips')


# ------------------------------------------------------------- a trained run's config

#: The config a training run writes into its workdir (what it was trained with).
RUN_CONFIG = 'config.json'
#: Groups that say how a trained run is used (sampled, evaluated, edited, timed, exported)
#: and on which devices, not what was trained: the modes take them from the command
#: line's config; every other field from the run's config.json (`for_mode`).
USE_GROUPS = ('sample', 'eval', 'likelihood', 'edit', 'export', 'bench', 'mesh',
              'market_eval', 'stress')


def _leaves(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': value} of a nested mapping (a ConfigDict's to_dict() or a JSON object)."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping) and value:
      out.update(_leaves(value, path + '.'))
    else:
      out[path] = value
  return out


def for_mode(given: ml_collections.ConfigDict, run: Mapping[str, Any],
             overrides: Mapping[str, Any]) -> tuple[ml_collections.ConfigDict, dict[str, list]]:
  """The config a mode uses on a trained run.

  given: the command line's config (the --config file with its --config.* overrides);
  run: the run's config.json; overrides: the command line's overrides ({'a.b': value}).
  Every field of USE_GROUPS comes from `given`, every other field from `run`, and the
  command line's overrides win over both (e.g. --config.data.path= for data that moved).
  Returns (config, notes): notes['differs'] lists 'field (run R, --config G)' for each
  field the run sets otherwise than the --config file (the run's value is used),
  notes['kept'] fields of the run that this code does not have or cannot take (the
  --config value is used), notes['missing'] fields the run's file lacks (added to the
  schema after it was trained: their defaults are used).
  """
  config = copy.deepcopy(given)
  wanted = _leaves(given.to_dict())
  notes: dict[str, list] = {'differs': [], 'kept': [], 'missing': []}
  saved = _leaves(run)
  for path, value in saved.items():
    if path.split('.')[0] in USE_GROUPS or path in overrides:
      continue
    if path not in wanted:
      notes['kept'].append(f'{path} (not a field of this config)')
      continue
    parent, _, name = path.rpartition('.')
    group = _get(config, parent) if parent else config
    try:
      group[name] = value
    except (TypeError, ValueError) as e:
      notes['kept'].append(f'{path} ({value!r} in the run: {e})')
      continue
    if _get(config, path) != wanted[path]:
      notes['differs'].append(f'{path} (run {_get(config, path)!r}, --config {wanted[path]!r})')
  notes['missing'] = [p for p in wanted if p not in saved and p.split('.')[0] not in USE_GROUPS
                      and p not in overrides and not any(s.startswith(p + '.') for s in saved)]
  return config, notes


def _get(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


# The largest post-hoc EMA width allowed: gamma >= 0 (gamma = 0, the plain mean of all
# updates, is sigma_rel 1/sqrt(12) = 0.2887; training/posthoc_ema.py).
POSTHOC_SIGMA_REL_MAX = 0.28


OPTIMIZER_ALGORITHMS = ('adamw', 'muon')


def check_posthoc_sigma_rel(value: Any, label: str) -> None:
  """ValueError '<label><value> is not in (0, 0.28] ...' unless `value` is a number in that
  range: the one bound of a post-hoc EMA width, for the config, `tools/sweep
  --ema_sigma_rel` and training/posthoc_ema.py alike."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 < value <= POSTHOC_SIGMA_REL_MAX):
    raise ValueError(
        f'{label}{value!r} is not in (0, {POSTHOC_SIGMA_REL_MAX}] (an EMA profile\'s width '
        'relative to the training length; EDM2 tracks (0.05, 0.10), and the default EMA, '
        'ema_warmup 10, is 0.09)')


def _check_posthoc(config: ml_collections.ConfigDict) -> None:
  for group, g in config.optim.items():
    rels = tuple(g.get('posthoc_sigma_rels', ()) or ())
    for s in rels:
      check_posthoc_sigma_rel(s, f'config.optim.{group}.posthoc_sigma_rels={rels}: ')
    if len(set(rels)) != len(rels):
      raise ValueError(f'config.optim.{group}.posthoc_sigma_rels={rels} repeats a value; '
                       'give distinct widths, e.g. (0.05, 0.10) as EDM2')
    every = g.get('posthoc_every', 0)
    if every < 0:
      raise ValueError(f'config.optim.{group}.posthoc_every={every} must be >= 0 (0: a '
                       'snapshot with each checkpoint only)')


def validate(config: ml_collections.ConfigDict) -> None:
  """Impossible values fail here, before any data is read or anything compiles."""
  for field, choices in _CHOICES.items():
    if _get(config, field) not in choices:
      raise ValueError(f'config.{field}={_get(config, field)!r} is not one of {choices}')
  for field in _POSITIVE:
    if _get(config, field) <= 0:
      raise ValueError(f'config.{field}={_get(config, field)} must be positive')
  for group, g in config.optim.items():
    if g.get('algorithm', 'adamw') not in OPTIMIZER_ALGORITHMS:
      raise ValueError(f'config.optim.{group}.algorithm={g.algorithm!r} is not one of '
                       f'{OPTIMIZER_ALGORITHMS}')
    if not 0 <= g.get('muon_beta', 0.95) < 1:
      raise ValueError(f'config.optim.{group}.muon_beta={g.muon_beta} must be in [0, 1) '
                       '(Muon\'s momentum; 0.95 is the usual value)')
    if g.get('ema_warmup', 10.0) <= 1:
      raise ValueError(f'config.optim.{group}.ema_warmup={g.ema_warmup} must be > 1 (the EMA\'s '
                       'decay (1 + n) / (c + n) must stay below 1; 10 is the default)')
  _check_posthoc(config)
  scale = config.reverse.get('w_embed_scale', generator.W_EMBED_SCALE)
  if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
    raise ValueError(f'config.reverse.w_embed_scale={scale!r} must be a finite number > 0 (the '
                     'fastest angular frequency of G\'s Fourier features of w, per unit of w; '
                     'the default is 1000)')
  m = config.model
  if m.image_size % m.patch_size:
    raise ValueError(f'config.model.image_size={m.image_size} is not divisible by '
                     f'config.model.patch_size={m.patch_size}')
  width = m.get('image_width', 0)
  if width < 0 or width % m.patch_size:
    raise ValueError(f'config.model.image_width={width} must be 0 (square images) or a positive '
                     f'multiple of config.model.patch_size={m.patch_size}')
  base_density.check(m.base, m.nu)
  if m.num_classes < 0:
    raise ValueError(f'config.model.num_classes={m.num_classes} must be >= 0 (0 = unconditional)')
  for name, value in config.objective.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f'config.objective.{name}={value} is not a finite number')
  if not 0 <= config.objective.label_drop_prob < 1:
    raise ValueError('config.objective.label_drop_prob must be in [0, 1)')
  if config.objective.noise_sigma < 0:
    raise ValueError('config.objective.noise_sigma must be >= 0')
  rows = int(config.schedule.reverse_batch_size)
  if rows < 0 or rows > config.batch_size:
    raise ValueError(f'config.schedule.reverse_batch_size={rows} must be in [0, batch_size='
                     f'{config.batch_size}] (0 = the whole batch)')
  if not 0 <= config.objective.prior_fraction < 1:
    raise ValueError(f'config.objective.prior_fraction={config.objective.prior_fraction} must be '
                     'in [0, 1): the share of each G batch given to prior pairs (0 = off)')
  if not 0 < config.objective.cfg_guided_fraction <= 1:
    raise ValueError(f'config.objective.cfg_guided_fraction={config.objective.cfg_guided_fraction}'
                     ' must be in (0, 1]: the share of each G batch trained with guidance '
                     '(1 = every row may be)')
  if config.objective.prior_fraction > 0 and config.objective.reverse_target != 'trajectory':
    raise ValueError('config.objective.prior_fraction adds prior pairs to trajectory supervision; '
                     "with reverse_target='inverse_matching' every row is already prior noise: "
                     'set prior_fraction=0')
  if config.objective.denoise_target != 'clean' and (
      config.objective.denoise != 'learned' or config.objective.reverse_target != 'trajectory'):
    raise ValueError(f'config.objective.denoise_target={config.objective.denoise_target!r} sets '
                     "the end target of learned denoising on F's trajectories; with denoise="
                     f'{config.objective.denoise!r} and reverse_target='
                     f'{config.objective.reverse_target!r} it would change nothing: set '
                     "denoise='learned' and reverse_target='trajectory', or denoise_target='clean'")
  mode, heads = config.objective.reverse_mode, config.reverse.head_mode
  if (mode, heads) in (('hidden', 'per_stage'), ('align', 'shared')):
    raise ValueError(f"config.objective.reverse_mode={mode!r} needs config.reverse.head_mode="
                     f"{'shared' if mode == 'hidden' else 'per_stage'!r} (hidden distillation "
                     'decodes every stage with the one output head; alignment learns one per stage)')
  # Guidance scales go into traced samplers (G's w is an input it was trained on, in
  # [0, cfg_w_max]): a NaN or a negative G scale would give wrong images, not an error.
  s = config.sample
  if not math.isfinite(s.guidance):
    raise ValueError(f'config.sample.guidance={s.guidance} must be a finite number')
  if not math.isfinite(s.reverse_guidance) or (s.reverse_guidance < 0
                                               and s.reverse_guidance != -1.0):
    raise ValueError(f'config.sample.reverse_guidance={s.reverse_guidance} must be >= 0, or -1 '
                     '(the same as config.sample.guidance)')
  if not (math.isfinite(s.fixed_point_tol) and s.fixed_point_tol > 0):
    raise ValueError(f'config.sample.fixed_point_tol={s.fixed_point_tol} must be a finite '
                     'number > 0 (a NaN tolerance would stop every sweep after one iteration)')
  if s.fixed_point_max_iters < 0 or s.fixed_point_groups < 1:
    raise ValueError(f'config.sample.fixed_point_max_iters={s.fixed_point_max_iters} must be '
                     f'>= 0 (0 = the number of tokens) and fixed_point_groups='
                     f'{s.fixed_point_groups} >= 1')
  w_reverse = decoders.reverse_guidance(config)
  two_pass = config.sample.reverse_cfg == 'two_pass'
  if config.reverse.enabled and two_pass and w_reverse != 0 and (
      not m.num_classes or config.objective.label_drop_prob <= 0):
    raise ValueError("config.sample.reverse_cfg='two_pass' guides G with its unconditional "
                     'pass, which needs a class-conditional model (config.model.num_classes > 0) '
                     'trained with label dropout (config.objective.label_drop_prob > 0); or set '
                     'config.sample.reverse_guidance=0')
  if (config.reverse.enabled and not two_pass
      and not 0 <= w_reverse <= max(config.objective.cfg_w_max, 0.0)):
    raise ValueError(f'G is asked for guidance w={w_reverse:g} but was trained on w in '
                     f'[0, {config.objective.cfg_w_max:g}]: raise config.objective.cfg_w_max '
                     '(training-time CFG), lower config.sample.reverse_guidance, or guide G in '
                     "two passes (config.sample.reverse_cfg='two_pass')")
  if not isinstance(m.init_from, str):
    raise ValueError(f'config.model.init_from={m.init_from!r} must be a path (a string)')
  for name in ('lpips_weight', 'convnext_weight', 'feature_weight'):
    value = config.perceptual.get(name, 0.0)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
      raise ValueError(f'config.perceptual.{name}={value!r} must be a finite number >= 0 '
                       '(0 = the term is off)')
  # Inverse matching regresses G(z) on sg(F^-1(z)) token by token (method.md §4.7): no data
  # image, so no perceptual or feature term; a weight set with it would be silently dropped.
  weighted = [f'perceptual.{name}' for name in ('lpips_weight', 'convnext_weight',
                                                 'feature_weight')
              if config.perceptual.get(name, 0.0) > 0]
  if weighted and config.objective.reverse_target == 'inverse_matching':
    raise ValueError(f"config.objective.reverse_target='inverse_matching' has no data image for "
                     f"{', '.join(weighted)} to compare G's output with (the term would be "
                     f"dropped): set {'=0, '.join(weighted)}=0, or use reverse_target="
                     "'trajectory'")
  if not isinstance(config.perceptual.get('feature_net', ''), str):
    raise ValueError(f'config.perceptual.feature_net={config.perceptual.feature_net!r} must be '
                     "an asset prefix (a string; '' = the bundled MNIST feature net)")
  for name in ('temperature', 'reverse_temperature'):
    t = config.sample.get(name, -1.0)
    if not math.isfinite(t) or (t <= 0 and not (name == 'reverse_temperature' and t == -1.0)):
      raise ValueError(f'config.sample.{name}={t} must be a finite number > 0'
                       + (' (or -1: the same as sample.temperature)' if name.startswith('reverse')
                          else ''))
  if config.sample.decoder == 'reverse' and not config.reverse.enabled:
    raise ValueError("config.sample.decoder='reverse' needs config.reverse.enabled=True")
