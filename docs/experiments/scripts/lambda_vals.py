"""What lambda changes in a joint step (docs/experiments/objective.md): G's update after 3
joint steps of the tiny config, relative to lambda 1's, with and without clip and eps."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'tests'))
from test_joint_objective import params_after_joint_steps, update_difference
start, b0, _ = params_after_joint_steps(1.0, 0.0, 1e-30)
for w in (0.5, 2.0):
  _, p, _ = params_after_joint_steps(w, 0.0, 1e-30); print('no clip, eps~0, lambda', w, update_difference(p['reverse'], b0['reverse'], start), flush=True)
_, b1, _ = params_after_joint_steps(1.0, 0.0)
for w in (0.5, 2.0):
  _, p, _ = params_after_joint_steps(w, 0.0); print('no clip, eps 1e-8, lambda', w, update_difference(p['reverse'], b1['reverse'], start), flush=True)
_, b2, m = params_after_joint_steps(1.0, 1.0); print('clip grad_norm lambda 1', m['grad_norm/reverse'])
for w in (0.5, 2.0, 1e-3):
  _, p, m = params_after_joint_steps(w, 1.0); print('clip 1, eps 1e-8, lambda', w, update_difference(p['reverse'], b2['reverse'], start), m['grad_norm/reverse'], flush=True)
