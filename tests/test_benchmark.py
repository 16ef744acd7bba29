"""The benchmark runs end to end on the tiny config and reports every number it promises."""
import json

import pytest

from biflow_jax.modes import bench
from biflow_jax.runtime import timing
from biflow_jax.tools import step_cost

from test_train import parse_config

KEYS = ('device', 'backend', 'weights', 'batch', 'exact_ms_per_image', 'fixed_point_ms_per_image',
        'fixed_point_iterations_per_block', 'fixed_point_max_residual',
        'fixed_point_max_abs_diff_vs_exact', 'score_denoise_ms_per_image',
        'speedup_fixed_point_vs_exact', 'fixed_point_uncached_ms_per_image',
        'fixed_point_uncached_iterations_per_block', 'fixed_point_max_abs_diff_cached_vs_uncached',
        'speedup_fixed_point_cache_vs_uncached', 'speedup_fixed_point_uncached_vs_exact',
        'reverse_ms_per_image', 'speedup_reverse_vs_exact',
        'train_step_ms', 'train_examples_per_sec', 'train_step_tflops',
        'train_achieved_tflops_per_sec', 'peak_tflops', 'mfu', 'peak_memory_bytes',
        'train_step_memory_bytes')


# The default run keeps test_step_cost_reports_compiled_memory_per_phase.
@pytest.mark.slow  # compiles and times every sampler (~70 s)
def test_bench_writes_every_key(tmp_path, capsys, caplog):
  config = parse_config('--config.reverse.enabled=True', '--config.bench.repeats=2',
                        '--config.bench.batch=4', '--config.bench.peak_tflops=1.0',
                        '--config.sample.fixed_point_groups=3')
  with caplog.at_level('INFO'):
    result = bench.run(config, tmp_path)
  assert f'wrote {tmp_path / "bench.json"}' in caplog.text  # where it is (issue 32, item 11)
  saved = json.loads((tmp_path / 'bench.json').read_text())
  for key in KEYS:
    assert key in saved, key
  assert saved['exact_ms_per_image'] > 0 and saved['reverse_ms_per_image'] > 0
  assert saved['train_step_tflops'] > 0
  assert 0 < saved['mfu'] < 1  # against a made-up 1 TFLOP/s peak
  memory = saved['train_step_memory_bytes']  # XLA's analysis of the compiled step
  assert memory['argument'] > 0 and memory['total'] >= memory['argument'] - memory['alias']
  assert saved['fixed_point_max_abs_diff_vs_exact'] < 1e-2
  # GSJ with and without its KV cache: the same iterates and sweeps, timed side by side.
  assert saved['fixed_point_max_abs_diff_cached_vs_uncached'] < 1e-4
  assert (saved['fixed_point_iterations_per_block']
          == saved['fixed_point_uncached_iterations_per_block'])
  assert saved['fixed_point_uncached_ms_per_image'] > 0
  assert 'BiFlow reverse model G (1 NFE)' in capsys.readouterr().out
  assert result['batch'] == 4


@pytest.mark.parametrize('kind,expected', [('TPU v5p', 459.0), ('TPU v5 lite', 197.0),
                                           ('NVIDIA H200', 989.0), ('cpu', None)])
def test_peak_table(kind, expected):
  assert timing.peak_tflops(kind) == expected
  assert timing.peak_tflops(kind, override=3.0) == 3.0


def test_step_cost_reports_compiled_memory_per_phase():
  result = step_cost.step_cost(parse_config('--config.reverse.enabled=True'), memory=True)
  memory = result['train_step_memory_bytes']
  assert set(memory) == set(result['train_step_flops']) and result['num_devices'] >= 1
  for phase in memory.values():
    assert phase['argument'] > 0 and phase['total'] > 0
