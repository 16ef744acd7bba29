"""Command-line parsing and error reporting shared by the entry points (main job, tools).

A person's mistake (a bad flag, value, path or file) is one line on the console, naming
the problem and, where the message knows it, the fix; its traceback goes to the full
log (`console.setup`), never the console. Bugs (any other exception) keep their
traceback on the console, where a bug report needs it.
"""
from __future__ import annotations

import contextlib
import re
import sys
import traceback
from pathlib import Path
from typing import Iterator, NoReturn

from absl import flags, logging

# What a person's mistake raises: impossible values and files that do not parse
# (ValueError), missing or unwritable paths (OSError: FileNotFoundError, PermissionError,
# NotADirectoryError, ...) and a missing optional package (ImportError: torch for .pth).
USER_ERRORS = (ValueError, OSError, ImportError)
USAGE_STATUS = 2        # a flag or the config file itself is wrong
ERROR_STATUS = 1        # the run stopped on a user error
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what shells report for Ctrl-C


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with one-line messages for what a person gets wrong: a config file that
  does not load (missing, a syntax error, an exception in get_config), an override of a
  field that doesn't exist, a bad flag.

  Pass as `app.run(main, flags_parser=parse_flags)`; exits with status 2 on bad flags.
  """
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (sorted out below)
    spec = next((a.split('=', 1)[1] for a in argv[1:] if re.match(r'^--?config=', a)), '')
    if spec and _raised_in(e, spec):  # the config file's own error, whatever its type
      config_load_failure('config', spec, e)
    if isinstance(e, (AttributeError, KeyError)):
      overrides = [a for a in argv[1:] if re.match(r'^--?config\.', a)]
      print(f'FATAL: a --config.* override names a field the config does not have ({e}); '
            f'overrides given: {overrides}. Fields are listed in biflow_jax/config_lib.py '
            'and the config file.', file=sys.stderr)
      sys.exit(USAGE_STATUS)
    if isinstance(e, flags.Error):
      print(f'FATAL: {e}\nPass --helpfull to see the flags.', file=sys.stderr)
      sys.exit(USAGE_STATUS)
    raise


def one_line(error: BaseException) -> str:
  """`Type: message` on one line (newlines and runs of spaces collapsed)."""
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _config_file(spec: str) -> str:
  """The file of a config flag's value: `configs/x.py:arg` -> `configs/x.py`."""
  return spec.split(':', 1)[0]


def _raised_in(error: BaseException, spec: str) -> bool:
  """Whether `error` (or its cause) was raised in the config file `spec` names."""
  name = Path(_config_file(spec)).name
  for e in (error, error.__cause__):
    if e is None:
      continue
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).name == name:
      return True
    if any(Path(f.filename).name == name for f in traceback.extract_tb(e.__traceback__)):
      return True
  return False


def config_load_failure(flag_name: str, spec: str, error: BaseException) -> NoReturn:
  """Prints `FATAL: --config=FILE could not be loaded (line N: code): reason` and exits 2."""
  cause = error.__cause__ or error
  where = ''
  if isinstance(cause, SyntaxError) and cause.lineno:
    where = f' (line {cause.lineno})'
  else:
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if Path(f.filename).name == Path(_config_file(spec)).name]
    if frames:
      where = f' (line {frames[-1].lineno}: {frames[-1].line})'
  reason = one_line(cause)
  if isinstance(cause, OSError) and 'No such file' in str(cause):
    reason = 'no such file (a path relative to this directory, or absolute)'
  print(f'FATAL: --{flag_name}={spec} could not be loaded{where}: {reason}', file=sys.stderr)
  sys.exit(USAGE_STATUS)


def load_config(flag_name: str = 'config'):
  """The config of a `config_flags` flag, or one line and status 2 when its file did not load.

  config_flags keeps a file that failed to load (missing, or raising in get_config at
  parse time when --config.* overrides are given later) as a stand-in that raises on
  first use, wherever that is; here the failure is reported before anything runs.
  """
  holder = flags.FLAGS[flag_name]
  spec = holder.serialize().split('=', 1)[-1] or '?'
  try:
    config = getattr(flags.FLAGS, flag_name)
    # The stand-in keeps the error in its __dict__ (a real ConfigDict has no '_error').
    error = vars(config).get('_error') if hasattr(config, '__dict__') else None
  except Exception as e:  # pylint: disable=broad-except  (whatever the file raised)
    error = e
  if error is not None:
    config_load_failure(flag_name, spec, error)
  return config


@contextlib.contextmanager
def user_errors(log_path: str | Path | None, also: tuple[type[BaseException], ...] = (),
                interrupted: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
  """Reports a user error raised in the block as one `FATAL:` line and exits with status 1.

  `also`: further exception classes that are a person's to fix (e.g. a busy workdir, a
  diverged run); `interrupted`: classes that mean the person stopped the job (Ctrl-C
  after a clean save), reported as one line with status 130, as is a KeyboardInterrupt.
  The traceback goes to the full log `log_path` (file only); other exceptions propagate.
  """
  try:
    yield
  except (KeyboardInterrupt, *interrupted) as e:
    text = ' '.join(str(e).split()) or 'stopped by Ctrl-C before it finished'
    logging.warning('%s', text, exc_info=True, extra={'file_only': True})
    print(text, file=sys.stderr)
    sys.exit(INTERRUPTED_STATUS)
  except (*USER_ERRORS, *also) as e:
    logging.error('%s', one_line(e), exc_info=True, extra={'file_only': True})
    where = f' (traceback in {log_path})' if log_path else ''
    print(f'FATAL: {one_line(e)}{where}', file=sys.stderr)
    sys.exit(ERROR_STATUS)
