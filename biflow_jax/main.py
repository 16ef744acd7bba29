"""Entry point: python -m biflow_jax.main --config=configs/<name>.py --workdir=DIR [--mode=...]."""
from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from biflow_jax.modes import bench, edit, evaluate, export, likelihood, market, sample
from biflow_jax.runtime import cli, console, parallel
from biflow_jax.training import checkpoints, restore, train, workdir_lock

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py). Modes other than train use the '
    "run's DIR/config.json for what was trained and this file for how the run is used "
    '(sample, eval, likelihood, edit, export, bench, mesh); --config.* overrides win.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')

# Every mode: name -> (what it writes, function(config, workdir)). The train mode's
# function reads --stop_at; every other mode restores the run's latest checkpoint.
MODES = {
    'train': ("train (or resume) the config's phase plan",
              lambda config, workdir: train.train_and_evaluate(config, workdir,
                                                               stop_at=FLAGS.stop_at or None)),
    'sample': ('a grid (and the raw samples) of sample.decoder -> DIR/samples/', sample.run),
    'eval': ('bits/dim, FID/FD, IS, precision/recall, class accuracy per decoder -> '
             'DIR/eval.json', evaluate.run),
    'bench': ('decoder and train-step timings, MFU -> DIR/bench.json', bench.run),
    'likelihood': ('bits/dim of config.likelihood.input per image -> DIR/likelihood/',
                   likelihood.run),
    'export': ("G's and F's samplers as jax.export artifacts -> DIR/export/", export.run),
    'edit': ('config.edit.task (inpaint, interpolate, class_swap) -> DIR/edit/', edit.run),
    'stress': ('market configs: tail_noise, condition, importance, reverse, backtest -> '
               'DIR/stress/', market.stress_needs_market),
}
# A market config (config.data.source='market') runs modes/market.py's train, sample, eval,
# stress and likelihood instead (market.mode).
flags.DEFINE_enum('mode', 'train', list(MODES),
                  '; '.join(f'{name}: {what}' for name, (what, _) in MODES.items()))
flags.DEFINE_integer('stop_at', 0, 'train: end this invocation after this global step, with a '
                     'checkpoint (a later run resumes); 0 = run the whole plan.', lower_bound=0)
flags.DEFINE_string('coordinator_address', '',
                    'Multi-process: host:port of process 0 for jax.distributed. Not needed on '
                    'Cloud TPU pods, under SLURM or Open MPI (detected from the environment).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', -1, 'Multi-process: this process, in [0, num_processes).')
flags.DEFINE_string('local_device_ids', '', 'Comma-separated local devices this process uses '
                    '(e.g. one GPU per process); empty = all.')
flags.DEFINE_enum('cpu_collectives', '', ['', 'gloo', 'mpi'],
                  'Collectives across processes on CPU (gloo for local multi-process runs).')
flags.mark_flags_as_required(['config', 'workdir'])

# Errors a person fixes (besides cli.USER_ERRORS: bad values, paths, files): one line on
# the console, the traceback in DIR/logs/.
USER_FACING = (train.NonFiniteError, checkpoints.CheckpointSaveError,
               checkpoints.CheckpointUnreadableError, workdir_lock.WorkdirBusyError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.setup(None)  # library INFO lines off the console from the first one on
  config = cli.load_config()  # a missing or broken config file: one line, status 2
  # Before anything touches a device: a multi-process job joins its peers first.
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.local_device_ids,
                                  FLAGS.cpu_collectives)
  # A workdir that cannot be written is one clear error naming it, before the log file
  # below (or anything else) tries to write there.
  with cli.user_errors(None):
    workdir_lock.check_writable(FLAGS.workdir)
  # Library INFO lines (orbax, grain, etils, jax, clu) go to DIR/logs/, never the console.
  log_path = console.setup(FLAGS.workdir, jax.process_index())
  if not parallel.is_main_process():
    logging.set_verbosity(logging.WARNING)  # one log per job: process 0's
  logging.info('mode=%s workdir=%s%s', FLAGS.mode, FLAGS.workdir,
               f' (full log: {log_path})' if log_path else '')
  with cli.user_errors(log_path, also=USER_FACING, interrupted=(train.Interrupted,)):
    if FLAGS.mode != 'train':  # a trained run is used as it was trained (restore.config_for_mode)
      config = restore.config_for_mode(
          config, FLAGS.workdir, config_flags.get_override_values(FLAGS['config']),
          f"--config={config_flags.get_config_filename(FLAGS['config'])}")
    console.file_only('config:\n%s', config)
    run = (market.mode(FLAGS.mode, FLAGS.stop_at or None) if market.is_market(config)
           else MODES[FLAGS.mode][1])
    run(config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
