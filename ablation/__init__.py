"""The evidence instrument: an ablation of the levels against classical baselines, with a measured noise floor.

- `harness`: the paired ablation (groups x repeats, every run through `graphs.runner.execute`) and its noise floor
  (the baseline configuration trained with different seeds), resumable; `cli`: its command lines.
- `sampling`: real training samples of the search space, the data of the surrogate trainer (`trials.surrogate`);
  `surrogate_quality` and `surrogate_check`: how well that surrogate fits, held out and against a real ablation.
- `collect`, `stats`, `figures`, `plots`, `report`: figures read back from the run folders, the statistics, the
  report; `imp`: imp@k of the mechanisms an ablation kept; `bbob`: the mechanisms on the BBOB functions; `pack`: an
  ablation folder as an archive.
"""
