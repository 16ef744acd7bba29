"""Write a biflow_jax run's F as a TARFlow state dict, for apple/ml-tarflow's own code.

  python -m biflow_jax.tools.export_tarflow --workdir=DIR --out=F.npz [--step=N]

F is the EMA params of DIR's latest checkpoint (or of step N): the weights samples and
evaluations use. Writes
- `F.npz`: every tensor of TARFlow's `transformer_flow.Model` state dict under its
  PyTorch name and layout, buffers included (each block's `attn_mask`, the prior `var`),
  float32. In ml-tarflow:
      sd = {k: torch.from_numpy(v) for k, v in np.load('F.npz').items()}
      model.load_state_dict(sd, strict=True)
- `F.json`: the `Model` constructor arguments (in_channels, img_size, patch_size,
  channels, num_blocks, layers_per_block, nvp, num_classes), with head_dim and expansion
  (fixed inside TARFlow's Model) and our `clip`, plus the checkpoint it came from and
  F's parameter count.

`convert.tarflow.load(F.npz)` and `config.model.init_from=F.npz` read it back exactly.
Where TARFlow's published Model would compute another function (F's clip, a head size
other than 64), the tool says so. The run's config.json gives the image geometry and
heads. Failures (no checkpoint, no config.json, a damaged checkpoint, an F that does not
match its config) exit with status 1 and one line, before anything is written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath

from biflow_jax.convert import tarflow
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.runtime import cli, files
from biflow_jax.training import init_from

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The biflow_jax run whose F to export.')
flags.DEFINE_string('out', None, 'Output .npz; a .json with the architecture goes beside it.')
flags.DEFINE_integer('step', -1, 'Checkpoint step to export; -1 = the latest.')


def run_flow(step_dir: epath.PathLike) -> ForwardFlow:
  """F as the run's config.json describes it. FileNotFoundError without config.json."""
  model = init_from.run_config(step_dir)
  if model is None:
    raise FileNotFoundError(f'{epath.Path(step_dir).parent.parent / "config.json"} is missing: '
                            "the export needs the run's model config (image size, heads)")
  return ForwardFlow.from_config(ml_collections.ConfigDict(model))


def abstract_params(flow: ForwardFlow) -> Any:
  """F's params as ShapeDtypeStructs (nothing is computed)."""
  x = jnp.zeros((1,) + flow.image_shape, jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if flow.num_classes else None
  return jax.eval_shape(lambda: flow.init(jax.random.PRNGKey(0), x, y))['params']


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
  """np.savez to a temporary name, then renamed: a failed write leaves no partial file."""
  tmp = path.with_name(path.name + '.tmp')
  with tmp.open('wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def export(workdir: str | os.PathLike, out: str | os.PathLike,
           step: int | None = None) -> dict[str, Any]:
  """Writes `out` (.npz) and its .json; returns the JSON's content.

  Raises FileNotFoundError (no checkpoint or step, no config.json) and ValueError (a path
  that is no run, a damaged checkpoint, params that are not the config's F, an `out` that
  does not end in .npz), all before anything is written.
  """
  out = Path(out)
  if out.suffix != '.npz':
    raise ValueError(f'--out={out} must end in .npz (TARFlow state dict arrays)')
  step_dir, step = init_from.resolve_run(workdir, step)
  flow = run_flow(step_dir)
  params = init_from.read_params(step_dir)
  init_from.check_tree(params, abstract_params(flow), str(step_dir))
  state = tarflow.export_state_dict(flow, params)
  args = {**tarflow.tarflow_args(flow), 'source': str(step_dir), 'step': step,
          'num_params': int(sum(np.size(v) for v in jax.tree.leaves(params)))}
  out.parent.mkdir(parents=True, exist_ok=True)
  _write_npz(out, state)
  out.with_suffix('.json').write_text(files.json_text(args, str(out.with_suffix('.json'))))
  for note in tarflow.export_caveats(flow):
    logging.warning('%s: %s', out, note)
  return args


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir or not FLAGS.out:
    print('FATAL: --workdir and --out are required', file=sys.stderr)
    sys.exit(2)
  try:
    args = export(FLAGS.workdir, FLAGS.out, None if FLAGS.step < 0 else FLAGS.step)
  except (FileNotFoundError, ValueError) as e:
    print(f'FATAL: {e}', file=sys.stderr)
    sys.exit(1)
  print(f'wrote {FLAGS.out} and {Path(FLAGS.out).with_suffix(".json")}: F of step {args["step"]} '
        f'({args["num_params"]:,} params) in TARFlow layout')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
