"""`ablation pack DIR OUT.tar.gz`: the evidence of an ablation without its bulk — the manifest, the surrogate's fit,
the noise floor, and per run its settings, trace, summary, results table and confirmations. The report regenerates
from an unpacked pack alone (`ablation report`); the checkpoint databases and the experiments' files are left out
(they are what resume needs, not what the figures are computed from)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ablation.harness import MANIFEST, SURROGATE_FIT

RUN_FILES = ("run.json", "trace.jsonl", "summary.json", "results.tsv")


def evidence(root: Path) -> list[Path]:
    """The files of ``root`` the report reads, relative to it, in a stable order."""
    root = Path(root)
    if not (root / MANIFEST).exists():
        raise FileNotFoundError(f"{root} is not an ablation folder (no {MANIFEST})")
    found = [Path(MANIFEST), Path("base_train.py"), Path(SURROGATE_FIT)]
    found += sorted(p.relative_to(root) for p in root.glob("noise/*/outcome.json"))
    for run_dir in sorted((root / "runs").glob("*")):
        found += [run_dir.relative_to(root) / name for name in RUN_FILES]
        found += sorted(p.relative_to(root) for p in run_dir.glob("confirm/*/outcome.json"))
    return [p for p in found if (root / p).is_file()]


def pack(root: Path, out: Path) -> list[Path]:
    """Write the evidence of ``root`` to the gzipped tar ``out`` under the folder's own name; return the files."""
    files = evidence(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for rel in files:
            tar.add(Path(root) / rel, arcname=str(Path(Path(root).resolve().name) / rel))
    return files
