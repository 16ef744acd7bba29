"""Entry point: python -m biflow_jax.main --config=configs/<name>.py --workdir=DIR [--mode=...]."""
from __future__ import annotations

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval', 'bench'],
                  'train (or resume); sample: a grid from the latest checkpoint; '
                  'eval: bits/dim, FID, IS, precision/recall, class accuracy per decoder -> '
                  'DIR/eval.json; bench: decoder and train-step timings, MFU -> DIR/bench.json.')
flags.mark_flags_as_required(['config', 'workdir'])


# Libraries whose INFO lines drown the training log; their warnings still show.
_QUIET_AT_INFO = ('orbax', 'etils', 'grain', 'tensorstore')


def _quiet_library_info(record) -> bool:
  return record.levelno >= logging.WARNING or not any(
      f'/{name}/' in record.pathname for name in _QUIET_AT_INFO)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(_quiet_library_info)
  # Imported here so `--help` is fast and flag errors come before JAX starts.
  from biflow_jax import benchmark, train  # pylint: disable=g-import-not-at-top
  from biflow_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  logging.info('mode=%s workdir=%s\n%s', FLAGS.mode, FLAGS.workdir, config)
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'sample':
    train.sample_from_checkpoint(config, FLAGS.workdir)
  elif FLAGS.mode == 'eval':
    evaluate.evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'bench':
    benchmark.run(config, FLAGS.workdir)


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with a one-line message for an override of a field that doesn't exist."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a for a in argv[1:] if re.match(r'^--?config\.', a)]
    print(f'FATAL: a --config.* override names a field the config does not have ({e}); '
          f'overrides given: {overrides}. Fields are listed in biflow_jax/config_lib.py '
          'and the config file.', file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f'FATAL: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
