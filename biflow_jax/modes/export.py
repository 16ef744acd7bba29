"""`--mode=export`: a run's samplers as `jax.export` artifacts, usable without this package.

For each decoder in config.export.decoders ('reverse': G's 1-NFE sampler; 'exact': F's
exact inverse, with the score denoising the sample mode uses), DIR/export/<decoder>/ holds
- `sampler.jaxexport`: the serialized `jax.export.Exported` of
      f(weights: list of arrays, noise (B, T, D) float32, labels (B,) int32) -> images
  images (B, H, W, C) float32 in [-1, 1]; B is symbolic (any batch size works);
  guidance and denoising are fixed at export (the manifest says which);
- `weights.npz`: the EMA weights, `w0000`, `w0001`, ... in the order f takes them;
- `manifest.json`: shapes, guidance, temperature, num_classes, platforms, step, and the
  order and names of the weights.
DIR/export/run_exported.py, a copy of `biflow_jax/tools/run_exported.py`, loads one with
jax and numpy alone and samples.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from biflow_jax.inference import decoders, sampling
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.runtime import files
from biflow_jax.training import checkpoints, restore

ARTIFACT = 'sampler.jaxexport'
WEIGHTS = 'weights.npz'
MANIFEST = 'manifest.json'

# The standalone runner (jax and numpy only) shipped next to every export: a file copied,
# not code this module runs, so modes/ does not import tools/.
RUNNER = Path(__file__).resolve().parents[1] / 'tools' / 'run_exported.py'

#: The platform names jax.export takes (jax.export.export's `platforms`: 'tpu', 'cpu',
#: 'cuda', 'rocm'). jax.default_backend() says 'gpu' for both GPU kinds instead.
EXPORT_PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def _decoders(config) -> tuple[str, ...]:
  names = tuple(d for d in config.export.decoders.split(',') if d)
  if not names:
    names = ('reverse', 'exact') if config.reverse.enabled else ('exact',)
  for d in names:
    if d not in ('reverse', 'exact', 'fixed_point'):
      raise ValueError(f"config.export.decoders: {d!r} is not one of reverse, exact, fixed_point")
    if d == 'reverse' and not config.reverse.enabled:
      raise ValueError("config.export.decoders names 'reverse' but this run has no G "
                       '(config.reverse.enabled=False)')
  return names


def _platforms(config) -> tuple[str, ...]:
  """config.export.platforms as jax.export names them; '' = this machine's platform.

  The default is jax.export.default_export_platform(): jax.default_backend() is 'gpu' on
  NVIDIA and AMD hosts, which jax.export calls 'cuda' and 'rocm' (it canonicalises 'gpu'
  when lowering, to whichever GPU is present, and fails where there is none). Raises
  ValueError, before anything is restored, for a name jax.export does not take.
  """
  names = tuple(p.strip() for p in config.export.platforms.split(',') if p.strip())
  for name in names:
    if name not in EXPORT_PLATFORMS:
      hint = (": jax's backend name; jax.export names NVIDIA GPUs 'cuda' and AMD GPUs 'rocm'"
              if name == 'gpu' else '')
      raise ValueError(f'config.export.platforms: {name!r} is not a jax.export platform, one '
                       f'of {", ".join(EXPORT_PLATFORMS)}{hint}')
  return names or (jax.export.default_export_platform(),)


def export_decoder(config: ml_collections.ConfigDict, params: dict, decoder: str
                   ) -> tuple[jax.export.Exported, list[np.ndarray], list[str]]:
  """(Exported, weights in call order, their tree paths) for one decoder.

  `params` is the whole tree {'forward': ..., 'reverse': ...} (EMA weights).
  """
  decode = sampling.make_decoder(config, decoder, decoders.default_denoise(config, decoder))
  guidance = decoders.decoder_guidance(config, decoder)
  used = {k: v for k, v in params.items() if k == 'forward' or (k == 'reverse' and
                                                                  decoder == 'reverse')}
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(used)
  weights = [np.asarray(leaf) for _, leaf in leaves_with_paths]
  names = [checkpoints.leaf_name(path) for path, _ in leaves_with_paths]

  def sample(weight_list, noise, labels):
    tree = jax.tree_util.tree_unflatten(treedef, weight_list)
    return decode(tree, noise, labels, guidance)

  flow = ForwardFlow.from_config(config.model)
  (b,) = jax.export.symbolic_shape('b')
  args = ([jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
          jax.ShapeDtypeStruct((b, flow.num_tokens, flow.token_dim), jnp.float32),
          jax.ShapeDtypeStruct((b,), jnp.int32))
  exported = jax.export.export(jax.jit(sample), platforms=_platforms(config))(*args)
  return exported, weights, names


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> Path:
  """Exports the latest checkpoint's samplers to DIR/export/; returns that folder."""
  names = _decoders(config)  # bad values fail before the checkpoint is read
  _platforms(config)
  exp, state, step = restore.restore_run(config, workdir)
  if exp.models.frozen is not None and exp.models.frozen.vae is not None:
    raise ValueError('--mode=export covers pixel-space runs; this run samples VAE latents')
  out = Path(str(workdir)) / 'export'
  flow = exp.models.flow
  params = jax.tree.map(np.asarray, jax.device_get(state.ema))
  for decoder in names:
    exported, weights, weight_names = export_decoder(config, params, decoder)
    folder = out / decoder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT).write_bytes(exported.serialize())
    np.savez(folder / WEIGHTS, **{f'w{i:04d}': w for i, w in enumerate(weights)})
    manifest = dict(
        decoder=decoder, checkpoint_step=int(step),
        call='images = exported.call(weights, noise, labels)',
        noise_shape=['B', flow.num_tokens, flow.token_dim], noise='N(0, temperature^2 I)',
        temperature=float(decoders.decoder_temperature(config, decoder)),
        labels='int32 (B,), class in [0, num_classes) or -1 for none',
        num_classes=int(config.model.num_classes),
        image_shape=list(flow.image_shape), image_range=[-1.0, 1.0],
        guidance=float(decoders.decoder_guidance(config, decoder)),
        denoise=decoders.default_denoise(config, decoder),
        platforms=list(exported.platforms), weights=weight_names)
    (folder / MANIFEST).write_text(files.json_text(manifest, str(folder / MANIFEST)))
    logging.info('exported %s (%s, %d weight arrays) -> %s', decoder,
                 ','.join(exported.platforms), len(weights), folder)
  shutil.copyfile(RUNNER, out / 'run_exported.py')
  logging.info('sample with jax alone: python %s %s --num=16 --out=samples.npz',
               out / 'run_exported.py', out / names[0])
  return out
