"""The device benchmark runs at toy size on a CPU, on an image without the data and
config stack, and its ImageNet-256 sizes are configs/imagenet256.py's."""
import json

import pytest

from biflow_jax.tools import device_bench
from biflow_jax.training.experiment import build_models
from subprocess_util import python
from test_architecture import on_a_bare_image
from test_configs import load_config

# Run the tool as `python -m` with the data and config stack made unimportable, as on the
# accelerator image (which has only jax, flax, optax, numpy and absl).
BLOCKED_RUN = on_a_bare_image("""import runpy
sys.argv = ['device_bench'] + sys.argv[1:]
runpy.run_module('biflow_jax.tools.device_bench', run_name='__main__')""")

PROGRAMS = ('G sample (1 NFE)', 'VAE decode', 'F exact inverse (KV cache)', 'F score denoising',
            'train step, F phase (NLL)', 'train step, G phase (alignment, no perceptual)')


@pytest.mark.slow  # a subprocess compiles every device program: about 2 minutes of CI (round 4)
def test_toy_run_without_the_data_stack_writes_json_and_table(tmp_path):
  out = tmp_path / 'bench.json'
  proc = python('-c', BLOCKED_RUN, '--size=toy', '--repeats=1', '--batch=2', '--serial_batch=1',
                '--groups=4', '--peak_tflops=1', f'--out={out}', timeout=600)
  result = json.loads(out.read_text())
  names = [r['name'] for r in result['rows']]
  assert all(p in names for p in PROGRAMS) and any('Gauss-Seidel-Jacobi' in n for n in names)
  for row in result['rows']:
    assert row['ms_per_image'] > 0 and row['tflops'] > 0 and 0 < row['mfu'] < 1, row
    assert row['memory_bytes']['argument'] > 0, row
  assert result['speedup_vs_exact']['F exact inverse (KV cache)'] == pytest.approx(1.0)
  assert len(result['gsj_iterations_per_block']) == 2
  assert 'G sample (1 NFE)' in proc.stdout and 'MFU' in proc.stdout


@pytest.mark.parametrize('size', ['B', 'XL'])
def test_sizes_are_the_imagenet256_configs(size):
  config = load_config('imagenet256', size)
  want = build_models(config)
  m = config.model
  flow, generator, _ = device_bench.build_models(device_bench.PRESETS[size], m.attention,
                                                 m.scan, m.remat)
  assert flow == want.flow
  assert generator == want.generator
  vae = device_bench.PRESETS[size]
  assert (vae.vae_channels, vae.vae_groups) == (tuple(config.vae.block_out_channels),
                                                config.vae.norm_num_groups)
  assert vae.batch == config.batch_size
