"""Training: the loop, the jitted step, the train state, the optimiser and EMA,
checkpoints, experiment set-up (`build_experiment`), the workdir lock, `init_from`,
restoring a trained run for the modes, and post-hoc EMA snapshots (`posthoc_ema`).

May import: everything below it (`config_lib`, `evaluation/`, `inference/`, `objective/`,
`data/`, `convert/`, `models/`, `runtime/`, `assets`). Never modes or tools.
"""
