"""Which z-sensitivity number separates a collapsed G from a working one at CI size?
The CI fixture's sizes (tests/test_reverse_training.biflow_config: tiny F 200 steps, G 400)
under G recipes: the landed round-3 one (lr 2e-3, raw-F teacher, decay), the fixture's
(lr 3e-3), round 4's default (default_g: lr 8e-3, EMA teacher), that with no decay (tuned),
round 6's default (adaptive: tuned + adaptive weighting), that with Muon for G (muon) and
that at twice the lr (muon_lr16) and four times (muon_lr32). The
fixture has no training-time CFG, so the default's CFG fraction does not apply.
Usage: collapse_guard_measure.py RECIPES [SEEDS] [OUT_DIR], e.g. round3,default_g 0,1,2."""
import json, sys, time, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'tests'))
from test_reverse_training import biflow_config
from biflow_jax.training import train
from biflow_jax.tools import z_sensitivity
OUT = sys.argv[3] if len(sys.argv) > 3 else '/tmp/guard_measure'  # workdirs and JSON

# Each recipe: the config fields it sets on the fixture's config (the rest keep the fixture's).
RECIPES = {
  'round3': {'optim.reverse.lr': 2e-3, 'objective.reverse_teacher': 'params'},
  'fixture': {'optim.reverse.lr': 3e-3},
  'tuned': {'optim.reverse.lr': 8e-3, 'objective.reverse_teacher': 'ema',  # the default's, no decay
            'optim.reverse.min_lr_ratio': 1.0},
  'default_g': {'optim.reverse.lr': 8e-3, 'objective.reverse_teacher': 'ema'},
  'adaptive': {'optim.reverse.lr': 8e-3, 'objective.reverse_teacher': 'ema',
               'optim.reverse.min_lr_ratio': 1.0, 'objective.adaptive_p': 1.0},
}
RECIPES['muon'] = {**RECIPES['adaptive'], 'optim.reverse.algorithm': 'muon'}
RECIPES['muon_lr16'] = {**RECIPES['muon'], 'optim.reverse.lr': 1.6e-2}  # round 11
RECIPES['muon_lr32'] = {**RECIPES['muon'], 'optim.reverse.lr': 3.2e-2}  # round 12
names = sys.argv[1].split(',')
seeds = [int(s) for s in sys.argv[2].split(',')] if len(sys.argv) > 2 else [0]
out = {}
for seed in seeds:
  for name in names:
    config = biflow_config()
    config.seed = seed
    config.update_from_flattened_dict(RECIPES[name])
    w = f'{OUT}/{name}_s{seed}'
    shutil.rmtree(w, ignore_errors=True)
    t0 = time.time()
    train.train_and_evaluate(config, w)
    t1 = time.time()
    res = z_sensitivity.measure(config, w, guidance=0.0, temperature=1.0, per_class=30)
    res['train_s'], res['measure_s'] = t1 - t0, time.time() - t1
    out[f'{name}_s{seed}'] = res
    d = res['decoders']
    print(name, seed, 'G spread', round(d['reverse']['spread_ratio'], 3), 'recon', d['reverse']['reconstruction'],
          'exact spread', round(d['exact']['spread_ratio'], 3), 'train_s', round(t1 - t0), 'measure_s', round(res['measure_s']), flush=True)
    json.dump(out, open(f'{OUT}/measure_{sys.argv[1]}_{seeds[0]}.json', 'w'), indent=1)
