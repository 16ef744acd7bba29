"""The accelerator-speed tools run end to end at tiny size: memory_table and step_time_ab."""
import statistics

from biflow_jax.tools import memory_table, step_time_ab

from subprocess_util import ROOT
from test_train import parse_config

TINY = str(ROOT / 'configs' / 'tiny.py')


def test_memory_table_cell_compiles_on_the_devices_it_was_given():
  # Two CPU devices (as cheap as one) show that the child's XLA_FLAGS set its device count.
  row = memory_table.run_cell('configs/tiny.py', 2, remat=False, batch_size=8, timeout_s=600,
                              cwd=str(ROOT))
  assert 'not_measured' not in row, row
  assert row['mesh'] == {'data': 2, 'fsdp': 1}
  assert row['remat_setting'] == {'model': 'none', 'reverse': 'none'}
  forward = row['memory_bytes']['forward']
  assert forward['argument'] > 0 and forward['total'] > 0 and row['compile_s']['forward'] > 0
  assert memory_table.fits(row) == {chip: True for chip in memory_table.CHIPS}
  table = memory_table.markdown([row])
  assert "XLA:CPU's buffer assignment" in table
  assert '| configs/tiny.py | 2 | off | forward |' in table and '| yes | yes |' in table
  # A cell too big for a chip says so; one that did not finish is a row saying why.
  huge = {**row, 'memory_bytes': {'forward': {**forward, 'total': int(100e9)}}}
  assert memory_table.fits(huge) == {'TPU v5p (95 GB)': False, 'H200 (141 GB)': True}
  assert '| no | yes |' in memory_table.markdown([huge])
  late = memory_table.run_cell('configs/tiny.py', 1, True, None, timeout_s=0.01, cwd=str(ROOT))
  assert 'longer than' in late['not_measured'] and memory_table.fits(late) is None
  assert 'not measured: compile took longer' in memory_table.markdown([late])


def test_remat_off_overrides_both_networks():
  argv, env = memory_table.cell_command('c.py:XL', 64, remat=False, batch_size=256)
  assert argv[-3:] == ['--config.batch_size=256', *memory_table.REMAT_OFF]
  assert env['XLA_FLAGS'].endswith('--xla_force_host_platform_device_count=64')
  argv, _ = memory_table.cell_command('c.py', 1, remat=True, batch_size=None)
  assert not any('remat' in a or 'batch_size' in a for a in argv)


def test_step_time_ab_times_each_phase_in_the_tree_it_was_given():
  config = parse_config()
  batch = step_time_ab.random_batch(config)
  assert batch['image'].std() > 0 and batch['label'].max() < config.model.num_classes
  result = step_time_ab.run_child(str(ROOT), TINY, steps=2, timeout_s=600)
  assert result['package'] == str(ROOT) and result['tree'] == str(ROOT)
  times = result['phases']['forward']['step_s']
  assert len(times) == 2 and min(times) > 0
  # The summary pairs the trees' children; a tree against itself gives ratio 1.
  other = {**result, 'tree': 'B'}
  summary = step_time_ab.summarise([result, other], [str(ROOT), 'B'])
  assert summary['phases']['forward']['ratio'] == 1.0
  assert summary['phases']['forward']['cpu_ratio'] == 1.0
  assert len(result['phases']['forward']['cpu_s']) == 2
  assert summary['phases']['forward']['median_step_ms'][str(ROOT)] == (
      1e3 * statistics.median(times))
  assert '| forward |' in step_time_ab.format_summary(summary)
