"""Child process: `train_and_evaluate` on N fake CPU devices (argv: N WORKDIR STOP_AT CONFIG [overrides]).

STOP_AT 0 = train to the end of the plan. The device count must be set before JAX starts,
which is why this runs in its own process.
"""
import os
import sys

os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={int(sys.argv[1])}'
from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from biflow_jax.training import train  # pylint: disable=g-import-not-at-top


def main():
  _, _, workdir, stop_at, config_path, *overrides = sys.argv
  argv = ['prog', f'--config={config_path}', *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  train.train_and_evaluate(fv.config, workdir, stop_at=int(stop_at) or None)


if __name__ == '__main__':
  main()
