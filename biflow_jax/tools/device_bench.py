"""One-command device benchmark of BiFlow at ImageNet-256 scale, random weights, no files.

  python -m biflow_jax.tools.device_bench --size=B [--out=device_bench.json]
  python -m biflow_jax.tools.device_bench --size=toy        # seconds on a CPU (its test)

Imports only jax, flax, optax, numpy and absl (an accelerator image without the data
and config stack runs it). Sizes mirror configs/imagenet256.py (tests keep them equal):
F = iTARFlow-X/2 and G = BiFlow-X/2 on 32x32x4 latents, the SD VAE decoder to 256x256,
with the accelerator paths of that config (fused attention 'auto', scan, remat 'dots').

Every weight is random: F's zero-initialised heads are perturbed (a fresh F is the
identity, whose fixed-point inverse would stop after one sweep), so the iteration
counts of Gauss-Seidel-Jacobi are those of a random F, not of a trained one (stated
in the output). Measured, in one run (median of --repeats after a compile call):
- ms/image of G (1 NFE) and of the VAE decode at --batch;
- ms/image of F's exact inverse, Gauss-Seidel-Jacobi (with and without its KV
  cache of solved groups) and score denoising at
  --serial_batch (the serial decoders at a smaller batch, stated);
- both phases' train step at --batch: F (NLL of x + sigma eps, AdamW) and G (F frozen,
  its trajectory as targets of G's stage heads and output, MSE, AdamW). The perceptual
  terms of a full G step are not in it (their nets are the VAE decode plus LPIPS and
  ConvNeXt); the VAE decode is timed on its own;
- speed-ups against the exact inverse, achieved TFLOP/s (XLA's FLOP count of each
  compiled program), MFU against the chip's dense bf16 peak (timing.PEAK_TFLOPS or
  --peak_tflops), XLA's memory analysis of each program, and the device's peak memory.
Writes a JSON file (--out) and prints a table.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from biflow_jax.models import layers
from biflow_jax.models.flow import ForwardFlow, gaussian_nll, score_denoise
from biflow_jax.models.generator import SIZES, ReverseModel
from biflow_jax.models.vae import AutoencoderKL
from biflow_jax.runtime import tables, timing


@dataclasses.dataclass(frozen=True)
class Preset:
  """Shapes of one benchmark size (F, G, VAE) and its default batches."""
  latent_size: int
  latent_channels: int
  patch_size: int
  width: int
  num_heads: int
  num_blocks: int
  layers_per_block: int
  num_classes: int
  g_size: str                      # generator.SIZES key
  vae_channels: tuple[int, ...]
  vae_groups: int
  batch: int
  serial_batch: int
  dtype: str
  g_overrides: tuple[tuple[str, int], ...] = ()  # (field, value) replacing the size's


# ImageNet-256 sizes as configs/imagenet256.py sets them (tests/test_device_bench.py
# checks they agree); 'toy' is a few-second CPU run of every code path.
PRESETS = {
    'B': Preset(32, 4, 2, 768, 12, 8, 2, 1000, 'B', (128, 256, 512, 512), 32, 256, 16,
                'bfloat16'),
    'XL': Preset(32, 4, 2, 1152, 16, 8, 4, 1000, 'XL', (128, 256, 512, 512), 32, 256, 16,
                 'bfloat16'),
    'toy': Preset(8, 4, 2, 32, 2, 2, 1, 10, 'tiny', (16, 16), 8, 4, 2, 'float32',
                  g_overrides=(('width', 32), ('num_heads', 2))),
}


def build_models(preset: Preset, attention: str = 'auto', scan: bool = True,
                 remat: str = 'dots') -> tuple[ForwardFlow, ReverseModel, AutoencoderKL]:
  """F, G and the VAE of a preset, with the given accelerator switches."""
  p = preset
  dtype = layers.resolve_dtype(p.dtype)
  flow = ForwardFlow(image_shape=(p.latent_size, p.latent_size, p.latent_channels),
                     patch_size=p.patch_size, channels=p.width, num_blocks=p.num_blocks,
                     layers_per_block=p.layers_per_block, num_heads=p.num_heads,
                     num_classes=p.num_classes, clip=3.0, dtype=dtype, attention=attention,
                     scan=scan, remat=remat)
  width, depth, heads = SIZES[p.g_size]
  g = dict(width=width, depth=max(depth, p.num_blocks + 1), num_heads=heads)
  g.update(dict(p.g_overrides))
  generator = ReverseModel(num_tokens=flow.num_tokens, token_dim=flow.token_dim,
                           num_stages=p.num_blocks, num_classes=p.num_classes, dtype=dtype,
                           attention=attention, scan=scan, remat=remat, **g)
  vae = AutoencoderKL(block_out_channels=p.vae_channels, norm_num_groups=p.vae_groups,
                      latent_channels=p.latent_channels, dtype=dtype)
  return flow, generator, vae


def _perturb(params, key, scale: float = 0.02):
  """Every leaf + scale * N(0, 1): F's zero heads become a non-trivial random flow."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def _measure(name: str, fn, args: tuple, images: int, repeats: int, peak: float | None) -> dict:
  """Compile fn(*args) once (FLOPs, memory), then its median time; per-image and MFU."""
  compiled = jax.jit(fn).lower(*args).compile()
  flops = timing.flops_of(compiled)
  seconds = timing.time_fn(lambda: compiled(*args), repeats)
  out = {'name': name, 'images': images, 'seconds': seconds,
         'ms_per_image': 1e3 * seconds / images, 'tflops': None if flops is None else flops / 1e12,
         'achieved_tflops_per_sec': None if flops is None else flops / seconds / 1e12,
         'mfu': None, 'memory_bytes': timing.memory_of(compiled)}
  if flops is not None and peak:
    out['mfu'] = flops / seconds / (peak * 1e12)
  return out


def _train_step(loss_fn, tx):
  """One AdamW step of loss_fn(params, *batch) -> (params, opt_state, loss)."""
  def step(params, opt_state, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def run(size: str = 'B', batch: int = 0, serial_batch: int = 0, guidance: float = 2.0,
        groups: int = 16, tol: float = 1e-3, sigma: float = 0.1, repeats: int = 5,
        peak_tflops: float = 0.0, attention: str = 'auto', scan: bool = True,
        remat: str = 'dots', seed: int = 0) -> dict[str, Any]:
  """Every measurement of the module docstring, as a dict (see `format_table`)."""
  if size not in PRESETS:
    raise ValueError(f'unknown --size={size!r}; use one of {sorted(PRESETS)}')
  preset = PRESETS[size]
  batch, serial_batch = batch or preset.batch, serial_batch or preset.serial_batch
  flow, generator, vae = build_models(preset, attention, scan, remat)
  device = jax.devices()[0]
  peak = timing.peak_tflops(device.device_kind, peak_tflops)
  keys = jax.random.split(jax.random.key(seed), 8)

  def labels(n):
    return (jnp.arange(n) % preset.num_classes).astype(jnp.int32)

  image = jax.random.normal(keys[0], (batch,) + flow.image_shape)
  tokens = jax.random.normal(keys[1], (batch, flow.num_tokens, flow.token_dim))
  w = jnp.full((batch,), guidance, jnp.float32)
  f_params = jax.jit(lambda k: _perturb(flow.init(k, image[:1], labels(1))['params'], k))(keys[2])
  g_params = jax.jit(lambda k: generator.init(k, tokens[:1], labels(1), w[:1])['params'])(keys[3])
  pixels = jnp.zeros((1, 8 * preset.latent_size, 8 * preset.latent_size, 3))
  vae_params = jax.jit(lambda k: vae.init(k, pixels)['params'])(keys[4])
  f_vars, g_vars = {'params': f_params}, {'params': g_params}

  rows = []
  rows.append(_measure('G sample (1 NFE)', lambda v, z, y, w: generator.apply(v, z, y, w)[0],
                       (g_vars, tokens, labels(batch), w), batch, repeats, peak))
  latents = jax.random.normal(keys[5], (batch,) + flow.image_shape)
  rows.append(_measure('VAE decode', lambda v, x: vae.apply(v, x, method=AutoencoderKL.decode),
                       ({'params': vae_params}, latents), batch, repeats, peak))
  z_serial, y_serial = tokens[:serial_batch], labels(serial_batch)
  rows.append(_measure(
      'F exact inverse (KV cache)',
      lambda v, z, y: flow.apply(v, z, y, method=ForwardFlow.inverse, guidance=guidance),
      (f_vars, z_serial, y_serial), serial_batch, repeats, peak))
  gsj = lambda v, z, y: flow.apply(v, z, y, method=ForwardFlow.inverse, mode='fixed_point',
                                   guidance=guidance, tol=tol, num_groups=groups)
  rows.append(_measure(f'F Gauss-Seidel-Jacobi ({groups} groups, tol {tol:g})', gsj,
                       (f_vars, z_serial, y_serial), serial_batch, repeats, peak))
  # The same sweeps without the KV cache of solved groups (each sweep recomputes the prefix).
  gsj_uncached = lambda v, z, y: flow.apply(v, z, y, method=ForwardFlow.inverse,
                                            mode='fixed_point', guidance=guidance, tol=tol,
                                            num_groups=groups, kv_cache=False)
  rows.append(_measure(f'F Gauss-Seidel-Jacobi, no KV cache ({groups} groups)', gsj_uncached,
                       (f_vars, z_serial, y_serial), serial_batch, repeats, peak))
  _, gsj_iters, gsj_residual = jax.jit(gsj)(f_vars, z_serial, y_serial)
  x_noisy = image[:serial_batch]
  rows.append(_measure('F score denoising', lambda v, x, y: score_denoise(flow, v, x, y, sigma),
                       (f_vars, x_noisy, y_serial), serial_batch, repeats, peak))

  tx = optax.adamw(1e-4)

  def f_loss(params, x, y, noise):
    z, logdet, _ = flow.apply({'params': params}, x + sigma * noise, y)
    return jnp.mean(gaussian_nll(z, logdet))

  noise = jax.random.normal(keys[6], image.shape)
  f_step = _train_step(f_loss, tx)
  rows.append(_measure('train step, F phase (NLL)', f_step,
                       (f_params, tx.init(f_params), image, labels(batch), noise), batch,
                       repeats, peak))

  def g_loss(params, x, y, w):
    _, _, trajectory = flow.apply(f_vars, x, y)
    trajectory = [jax.lax.stop_gradient(t) for t in trajectory]
    out, projections = generator.apply({'params': params}, trajectory[-1], y, w)
    loss = jnp.mean((out - trajectory[0]) ** 2)
    for j, p in enumerate(projections):  # projections[j] ~ x^{B-1-j}
      loss = loss + jnp.mean((p - trajectory[-2 - j]) ** 2)
    return loss

  g_step = _train_step(g_loss, tx)
  rows.append(_measure('train step, G phase (alignment, no perceptual)', g_step,
                       (g_params, tx.init(g_params), image, labels(batch), w), batch,
                       repeats, peak))

  by_name = {r['name']: r for r in rows}
  exact = by_name['F exact inverse (KV cache)']['ms_per_image']
  stats = jax.devices()[0].memory_stats() or {}
  return {
      'size': size, 'device': device.device_kind, 'backend': jax.default_backend(),
      'num_devices': jax.device_count(), 'batch': batch, 'serial_batch': serial_batch,
      'guidance': guidance, 'peak_tflops': peak, 'dtype': preset.dtype,
      'switches': {'attention': attention, 'scan': scan, 'remat': remat},
      'weights': 'random (F perturbed from its zero-init heads; VAE and G fresh)',
      'gsj_iterations_per_block': np.asarray(gsj_iters).tolist(),
      'gsj_max_residual': float(np.max(np.asarray(gsj_residual))),
      'rows': rows,
      'speedup_vs_exact': {r['name']: exact / r['ms_per_image'] for r in rows
                           if 'train step' not in r['name']},
      'peak_memory_bytes': stats.get('peak_bytes_in_use'),
  }


def format_table(result: dict) -> str:
  head = ('program', 'images', 'ms/image', 'x exact', 'TFLOP/s', 'MFU', 'XLA memory MiB')
  rows = [head]
  for r in result['rows']:
    speed = result['speedup_vs_exact'].get(r['name'])
    mem = r['memory_bytes']
    rows.append((r['name'], str(r['images']), f"{r['ms_per_image']:.4f}",
                 '' if speed is None else f'{speed:.1f}x',
                 '' if r['achieved_tflops_per_sec'] is None else f"{r['achieved_tflops_per_sec']:.2f}",
                 '' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%",
                 '' if mem is None else f"{mem['total'] / 2**20:.1f}"))
  lines = tables.aligned(rows)
  peak = result['peak_memory_bytes']
  lines.append(f"{result['device']} x{result['num_devices']} ({result['backend']}), size "
               f"{result['size']}, {result['dtype']}, switches {result['switches']}; peak "
               f"memory {'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}; MFU against "
               f"{result['peak_tflops'] or 'n/a (unknown peak: --peak_tflops)'} TFLOP/s; GSJ "
               f"sweeps per block {result['gsj_iterations_per_block']}; weights: "
               f"{result['weights']}")
  return '\n'.join(lines)


def main(argv=None) -> None:
  flags.DEFINE_enum('size', 'B', sorted(PRESETS), 'Model size (ImageNet-256 X/2) or toy.')
  flags.DEFINE_integer('batch', 0, 'Batch of G, the VAE and the train steps (0 = preset).')
  flags.DEFINE_integer('serial_batch', 0, 'Batch of the exact inverse, GSJ and score '
                       'denoising (0 = preset).')
  flags.DEFINE_float('guidance', 2.0, 'Guidance of the inverses and w given to G.')
  flags.DEFINE_integer('groups', 16, 'Gauss-Seidel-Jacobi groups.')
  flags.DEFINE_integer('repeats', 5, 'Timed calls per program (median).')
  flags.DEFINE_float('peak_tflops', 0.0, "The chip's dense bf16 peak (0 = timing.PEAK_TFLOPS).")
  flags.DEFINE_enum('attention', 'auto', list(layers.ATTENTION_IMPLS), 'Attention path.')
  flags.DEFINE_bool('scan', True, 'nn.scan over layers and blocks.')
  flags.DEFINE_enum('remat', 'dots', list(layers.REMAT_POLICIES), 'Remat policy.')
  flags.DEFINE_string('out', 'device_bench.json', 'JSON file to write.')

  def main_(_):
    f = flags.FLAGS
    result = run(f.size, f.batch, f.serial_batch, f.guidance, f.groups, repeats=f.repeats,
                 peak_tflops=f.peak_tflops, attention=f.attention, scan=f.scan, remat=f.remat)
    tables.report(result, format_table, f.out)

  app.run(main_, argv=argv)


if __name__ == '__main__':
  main()
