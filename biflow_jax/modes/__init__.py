"""What a trained run is used for, one module per `--mode` of `main.py`: `sample`,
`evaluate` (eval), `edit`, `likelihood`, `export`, `bench`; a market config's train,
sample, eval, stress and likelihood are `market` (its table) with `market_run`,
`market_sample`, `market_eval`, `stress`, `market_likelihood`. Each has
`run(config, workdir)` (evaluate: `evaluate`), restores the run's latest checkpoint and
writes into its workdir.

May import: everything below it. Never tools or main.
"""
