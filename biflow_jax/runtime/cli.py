"""Command-line parsing shared by the entry points (main job, tools)."""
from __future__ import annotations

import re
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with a one-line message for an override of a field that doesn't exist.

  Pass as `app.run(main, flags_parser=parse_flags)`; exits with status 2 on bad flags.
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a for a in argv[1:] if re.match(r'^--?config\.', a)]
    print(f'FATAL: a --config.* override names a field the config does not have ({e}); '
          f'overrides given: {overrides}. Fields are listed in biflow_jax/config_lib.py '
          'and the config file.', file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f'FATAL: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
    sys.exit(2)
