"""Scoring samples and likelihoods: FD/FID, IS, precision/recall, class accuracy, the
ADM reference-batch protocol, held-out bits/dim, and their feature networks and caches.
Market scenarios: stylized-fact metrics (`market_metrics`), in-tree baselines
(`market_baselines`), the report (`market_report`), VaR/ES and importance sampling
(`tail_risk`), VaR backtests (`backtest`), year-block bootstrap (`block_bootstrap`) and
the stress estimators in z (`market_stress`).

The `--mode=eval` entry that restores a run and samples it is `modes/evaluate.py`.

May import: `models/`, `convert/`, `objective/`, `data/`, `inference/`, `runtime/`,
`assets`. Never config_lib, training or modes.
"""
