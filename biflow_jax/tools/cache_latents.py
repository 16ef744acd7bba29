"""Encodes a tfds image dataset into the SD-VAE latent cache that latent BiFlow trains on.

    python -m biflow_jax.tools.cache_latents --config=configs/imagenet256.py --out=DIR \
        [--split=train] [--batch=64] [--examples_per_shard=2048]

Reads the prepared tfds dataset config.data.tfds_name ('imagenet2012' when empty) from
config.data.data_dir with `tfds.data_source(..., download=False)`; preparing it is a
one-off the user does with the ImageNet archives:

    tfds build imagenet2012 --data_dir=D --manual_dir=ARCHIVES --file_format=array_record

(--manual_dir here only fills in that command when the dataset is missing.) Each image is
centre-cropped to config.vae.image_size the ADM way, then it and its mirror are encoded
by the VAE at config.vae.weights; the posterior (mean, std) goes to
DIR/<split>/latents-*.array_record (format: biflow_jax/data/latents.py). Point
config.data.path at DIR to train on it.

Resumable: rerun the same command after an interruption; finished shards are skipped.
Multi-host: run it on every host with the same --out on a shared filesystem; each process
encodes the shards s with s % process_count == process_index (from JAX, or
--process_index/--process_count), and whichever finishes last writes meta.json.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

import jax

from biflow_jax.convert import vae as vae_convert
from biflow_jax.data import input_pipeline, latents
from biflow_jax.models.vae import downsample_factor
from biflow_jax.runtime import cli, parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('out', None, 'Cache directory; the split is written to OUT/<split>/.')
flags.DEFINE_string('split', 'train', 'tfds split to encode (ImageNet: train or validation).')
flags.DEFINE_integer('batch', 64, 'Images per VAE call, mirrors included (even).')
flags.DEFINE_integer('examples_per_shard', 2048,
                     'Source images per shard (each gives 2 records). Fixes the layout: a '
                     'resumed run must use the same value.')
flags.DEFINE_enum('latent_dtype', 'float16', ['float16', 'float32'],
                  'Storage dtype of the posterior mean and std.')
flags.DEFINE_integer('max_examples', 0, 'Encode only the first N examples (0 = all); a '
                     'quick end-to-end check.')
flags.DEFINE_integer('num_threads', 8, 'Threads decoding and cropping images ahead of the VAE.')
flags.DEFINE_string('manual_dir', '', 'Where the dataset archives are; only used to name the '
                    '`tfds build` command if the dataset is not prepared.')
flags.DEFINE_integer('process_index', -1, 'This process (-1 = jax.process_index()).')
flags.DEFINE_integer('process_count', -1, 'Processes sharing the work (-1 = '
                     'jax.process_count()).')
flags.mark_flags_as_required(['config', 'out'])

DEFAULT_TFDS_NAME = 'imagenet2012'


class _Head:
  """The first `n` examples of a source (--max_examples)."""

  def __init__(self, source, n: int):
    self._source, self._n = source, min(n, len(source))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int):
    if not 0 <= i < self._n:
      raise IndexError(i)
    return self._source[i]


def load_vae(vae_cfg):
  """(model, params) of the VAE; a separate function so tests can swap in a tiny one."""
  return vae_convert.load(vae_cfg)


def run(config, out: str) -> dict:
  """Caches config's dataset split into `out`; returns `latents.write_cache`'s summary."""

  if FLAGS.batch < 2 or FLAGS.batch % 2:
    raise app.UsageError(f'--batch={FLAGS.batch} must be even and >= 2: each image is '
                         'encoded together with its mirror')
  process_index = jax.process_index() if FLAGS.process_index < 0 else FLAGS.process_index
  process_count = jax.process_count() if FLAGS.process_count < 0 else FLAGS.process_count
  if not 0 <= process_index < process_count:
    raise app.UsageError(f'--process_index={process_index} is not in [0, '
                         f'--process_count={process_count})')
  vae_cfg, name = config.vae, config.data.tfds_name or DEFAULT_TFDS_NAME
  source = input_pipeline.open_tfds_source(name, FLAGS.split, config.data.data_dir, FLAGS.manual_dir)
  if FLAGS.max_examples > 0:
    source = _Head(source, FLAGS.max_examples)

  model, params = load_vae(vae_cfg)
  factor = downsample_factor(model)
  if vae_cfg.image_size % factor:
    raise ValueError(f'config.vae.image_size={vae_cfg.image_size} is not divisible by the '
                     f'VAE downsampling factor {factor}')
  side = vae_cfg.image_size // factor
  want = (config.model.image_size, config.model.in_channels)
  if want != (side, model.latent_channels):
    raise ValueError(
        f'the cache would hold {side}x{side}x{model.latent_channels} latents '
        f'(config.vae.image_size={vae_cfg.image_size} / {factor}, '
        f'config.vae.latent_channels={model.latent_channels}) but the model reads '
        f'{want[0]}x{want[0]}x{want[1]} (config.model.image_size, config.model.in_channels); '
        'make them agree before spending hours encoding.')
  logging.info('caching %s:%s (%d examples) -> %s/%s as %dx%dx%d %s latents, process %d/%d',
               name, FLAGS.split, len(source), out, FLAGS.split, side, side,
               model.latent_channels, FLAGS.latent_dtype, process_index, process_count)
  return latents.write_cache(
      source, out, latents.make_vae_encode_fn(model, params), split=FLAGS.split,
      image_size=vae_cfg.image_size, scaling_factor=float(vae_cfg.scaling_factor),
      info={'source': {'tfds_name': name, 'split': FLAGS.split},
            'vae': latents.vae_info(vae_cfg)},
      batch_size=FLAGS.batch, examples_per_shard=FLAGS.examples_per_shard,
      latent_dtype=FLAGS.latent_dtype, process_index=process_index,
      process_count=process_count, num_threads=FLAGS.num_threads)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.process_index < 0:
    # On a cluster each host encodes its own shards: learn which host this is.
    parallel.initialize_distributed()
  summary = run(FLAGS.config, FLAGS.out)
  done = ('meta.json written: the cache is complete' if summary['meta_written'] else
          'other processes still have shards to do; the last one writes meta.json')
  print(f'{summary["directory"]}: {summary["written"]} shard(s) encoded, '
        f'{summary["skipped"]} already done, of the {summary["owned"]} this process owns '
        f'({summary["num_shards"]} in all); {done}.')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
