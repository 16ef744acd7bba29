"""Scoring samples and likelihoods: FD/FID, IS, precision/recall, class accuracy, the
ADM reference-batch protocol, held-out bits/dim, and their feature networks and caches.

The `--mode=eval` entry that restores a run and samples it is `modes/evaluate.py`.

May import: `models/`, `convert/`, `objective/`, `data/`, `inference/`, `runtime/`,
`assets`. Never config_lib, training or modes.
"""
