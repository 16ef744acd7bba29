"""Session-wide test settings.

One persistent XLA compilation cache for the whole pytest session (this process and every
main-job subprocess a test starts): dozens of modules train the same tiny configs, and on
2 CPU cores compiling their steps again is most of the suite's time. The cache lives in a
fresh temporary folder, so a run never reads executables from an earlier run or machine.
"""
import atexit
import os
import shutil
import tempfile

import jax

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='biflow_jax_test_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  # Cache every executable, however quick to compile (the defaults skip those under 1 s).
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  jax.config.update('jax_compilation_cache_dir', _CACHE)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
