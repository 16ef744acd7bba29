"""What a trained run is used for, one module per `--mode` of `main.py`: `sample`,
`evaluate` (eval), `edit`, `likelihood`, `export`, `bench`. Each has
`run(config, workdir)` (evaluate: `evaluate`), restores the run's latest checkpoint and
writes into its workdir.

May import: everything below it. Never tools or main.
"""
