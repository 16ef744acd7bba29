"""The README's quick start, walked command by command on configs/tiny_biflow.py (F, then
G, in seconds), from another directory with relative paths, as a new user types it
(issue 32, items 5, 6 and 11)."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from biflow_jax.data import input_pipeline
from subprocess_util import ROOT, python, run


def _strict_json(path):
  def refuse(constant):
    raise ValueError(f'{path} holds {constant}, which is not JSON')
  return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow  # eight commands of the main job: about 4 minutes on 2 busy cores
def test_quick_start_walks_on_tiny_biflow_with_relative_paths(tmp_path):
  (tmp_path / 'configs').symlink_to(ROOT / 'configs')
  images, labels = input_pipeline.load_bundled_mnist()
  np.savez(tmp_path / 'mine.npz', images=images[:8], labels=labels[:8])
  env = {'PYTHONPATH': str(ROOT)}  # this checkout's package, from another directory

  def main(*args):
    proc = python('-m', 'biflow_jax.main', '--config=configs/tiny_biflow.py',
                  '--workdir=workdir/tiny', *args, cwd=tmp_path, env=env, timeout=600)
    return proc.stdout + proc.stderr

  out = main()                                                              # train
  assert re.search(r'step 50/50 reverse \| ', out) and 'checkpoint 50 -> ' in out
  out = main('--mode=eval')
  assert 'wrote workdir/tiny/eval.json' in out
  assert set(_strict_json(tmp_path / 'workdir/tiny/eval.json')['decoders']) == {
      'reverse', 'exact', 'fixed_point'}
  out = main('--mode=sample', '--config.sample.decoder=reverse')
  assert "config: the run's workdir/tiny/config.json" in out
  assert 'wrote workdir/tiny/samples/reverse_' in out
  out = main('--mode=bench')
  assert 'wrote workdir/tiny/bench.json' in out and 'BiFlow reverse model G' in out
  out = main('--mode=edit', '--config.edit.task=inpaint', '--config.edit.mask=left')
  assert 'edit inpaint at step 50' in out
  out = main('--mode=likelihood', '--config.likelihood.input=mine.npz')
  assert 'mine.npz: 8 images, bits/dim mean' in out
  _strict_json(tmp_path / 'workdir/tiny/likelihood/mine.json')
  out = main('--mode=export')
  assert 'exported reverse' in out and 'exported exact' in out
  proc = run([sys.executable, 'workdir/tiny/export/run_exported.py', 'workdir/tiny/export/reverse',
              '--num=16', '--out=s.npz'], cwd=tmp_path, timeout=300)
  assert 'reverse: (16, 28, 28, 1) uint8 images -> s.npz' in proc.stdout
