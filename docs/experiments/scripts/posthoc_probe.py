"""Score a decoder's post-hoc EMAs of several widths (and its raw params, and the EMA the run
kept) on fixed cells, with tools/sweep's protocol (one restore; params swapped per width).

    python docs/experiments/scripts/posthoc_probe.py --config=configs/mnist.py --workdir=W \
        [--decoder=reverse|exact] [--cells=W:T,...] [--sigmas=kept,raw,0.05,...]

Writes W/ph_probe.json (resumable: cells already there are skipped). The MNIST log's round 8
and the CIFAR-10 log's section 10 (as /tmp/r40/ph_probe.py).
"""
import json
from absl import app, flags
from ml_collections import config_flags
from etils import epath
from biflow_jax.tools import sweep
from biflow_jax.training import restore, posthoc_ema
from biflow_jax.runtime import parallel
from biflow_jax.evaluation import features
from biflow_jax.modes import evaluate
from biflow_jax.inference import decoders
_CONFIG = config_flags.DEFINE_config_file('config', None)
flags.DEFINE_string('workdir', None, '')
flags.DEFINE_string('cells', '0:0.55,0:0.7,0:0.85,0.5:0.85,0.5:0.925,1:1', '')
flags.DEFINE_string('sigmas', 'kept,raw,0.03,0.05,0.07,0.0905,0.12,0.15,0.194,0.24', '')
flags.DEFINE_string('out', 'ph_probe.json', '')
flags.DEFINE_string('decoder', 'reverse', '')
FLAGS = flags.FLAGS

def main(_):
  config = restore.config_for_mode(_CONFIG.value, FLAGS.workdir, {}, 'probe')
  net = features.make_feature_net(config)
  exp, state, step = restore.restore_run(config, FLAGS.workdir)
  kept = parallel.local_copy(state.ema)
  D = FLAGS.decoder; G = sweep.decoder_group(D)
  to_pixels = decoders.pixel_decoder(exp.models.frozen, parallel.local_copy(exp.frozen_params))
  real, _ = evaluate.real_statistics(config, net, epath.Path(FLAGS.workdir) / 'eval_cache', to_pixels)
  path = epath.Path(FLAGS.workdir) / FLAGS.out
  out = json.loads(path.read_text()) if path.exists() else {}
  for name in FLAGS.sigmas.split(','):
    if name == 'kept':
      params = kept
    elif name == 'raw':
      params = dict(kept, **{G: parallel.local_copy(state.params)[G]})
    else:
      r = posthoc_ema.reconstruct(FLAGS.workdir, G, float(name), step, kept[G])
      print(f'sigma {name}: {r.snapshots} snapshots, fit error {r.relative_error:.2g}', flush=True)
      params = dict(kept, **{G: r.params})
    for cell_text in FLAGS.cells.split(','):
      w, t = map(float, cell_text.split(':'))
      key = f'{D} {name} {w:g},{t:g}'
      if key in out:
        continue
      cell = sweep.cell_config(config, D, w, t)
      stream = evaluate.SampleBatches(cell, params, D, int(config.eval.num_samples), int(config.eval.batch), to_pixels)
      m, _ = evaluate.score_against_heldout(stream, net, real, cell, key)
      out[key] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
      print(f'STEP {step} {key}: FD {m["frechet_distance"]:.1f} acc {m.get("class_accuracy", float("nan")):.3f} P {m["precision"]:.2f} R {m["recall"]:.2f}', flush=True)
      path.write_text(json.dumps(out, indent=1))

if __name__ == '__main__':
  app.run(main)
