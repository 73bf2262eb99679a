"""The evidence instrument: an ablation of the levels against classical baselines, with a measured noise floor.

- `harness`: the paired ablation (groups x repeats, every run through `graphs.runner.execute`), resumable.
- `noise`: the noise floor (the baseline configuration trained with different seeds).
- `sampling`, `surrogate`: real training samples of the search space and the fitted stand-in trainer served from them.
- `collect`, `stats`, `report`: figures read back from the run folders, the statistics and the report.
"""
