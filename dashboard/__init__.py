"""A local, read-only web dashboard of run folders and ablation folders: `python -m graphs.bilevel dashboard`.

The run's own code path knows nothing of it: it reads what the ledger writes (run.json, trace.jsonl, results.tsv,
experiments/, mechanisms/, summary.json; an ablation's manifest, noise floor and report) and follows the folders
while a run writes them. Every file it reads goes through `dashboard.folders`, which refuses any path that resolves
outside the folders it was given.
"""
