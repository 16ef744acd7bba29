"""How far G's conditioning moves from w = 0 as the guidance w grows (round 11, W10).
The class embedding cancels in condition(y, w) - condition(y, 0), so this is |e(w) - e(0)| of
G's embedding of w, read through the model's own `condition` on each run's EMA weights.
Usage: w_embedding_distance.py RUN [RUN ...]"""
import sys
from pathlib import Path
import jax.numpy as jnp, numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from configs import mnist
from biflow_jax.models.generator import ReverseModel
from biflow_jax.training import restore

WS = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 2.0)
for run in sys.argv[1:]:
  config = restore.config_for_mode(mnist.get_config(), run, {}, 'configs/mnist.py')
  _, state, _ = restore.restore_run(config, run)
  model = ReverseModel.from_config(config.reverse, config.model)
  w = jnp.array((0.0,) + WS)
  c = model.apply({'params': state.ema['reverse']}, None, w, len(w), method=ReverseModel.condition)
  d = np.linalg.norm(np.asarray(c - c[0]), axis=1)
  print(f'{run} (w_embed_scale {model.w_embed_scale:g}): |e(w) - e(0)| ' +
        ' '.join(f'{x:g}:{v:.2f}' for x, v in zip(WS, d[1:])))
