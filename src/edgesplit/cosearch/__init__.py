"""Device-aware co-search (EdgeTran): design space, predictors, search, grow-and-prune.

Modules: `space` (configs, sampling), `features` (params, FLOPs, op counts), `protran` (import of
ProTran's 7-device measurements), `profiler` (measure configs here), `predictor`/`costs`
(per-device cost predictors), `tasks`/`accuracy` (short real trainings, cached), `search`
(optuna TPE / NSGA-II / random), `pareto` (front, hypervolume), `refine` (grow-and-prune),
`workflow` (the file-to-file steps the CLI and `api` call). Importing this package imports
nothing heavy; torch loads with `encoder`, `accuracy`, `profiler`, `refine`, `workflow`.
"""
