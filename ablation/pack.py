"""`ablation pack DIR OUT.tar.gz`: the evidence of an ablation without its bulk — the manifest, the surrogate's fit,
the noise floor, per run its settings, trace, summary, results table, confirmations and the records of its
mechanisms (what `ablation imp` measures), and the finished frozen runs of `ablation imp` with its figures (imp/,
report/imp.json and imp.md). The report regenerates from an unpacked pack alone (`ablation report`);
the checkpoint databases and the experiments' files are left out.

`ablation unpack OUT.tar.gz DIR`: an ablation carried to another machine (or a later sitting) by its pack. The runs
of every repeat whose groups all finished are kept as they are. The runs of one repeat are compared with each other, so
they must train on one machine in one sitting (a fixed wall-clock budget measures the machine): a finished run of an
unfinished repeat is kept only when it trained in the sitting that unpacks it (the same boot id: the same machine,
not rebooted since), and reset to pending otherwise, with its folder removed; an unfinished run is always reset (the
pack holds no checkpoint to resume it from). `ablation resume DIR` then trains the reset runs from their start, with
the same seeds, and the runs never started. Nothing of a finished repeat is ever re-run. The frozen runs of `ablation
imp` are on the surrogate, which no machine's speed changes: every finished one is kept, and `ablation imp DIR` runs
only the ones missing."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from ablation.harness import MANIFEST, SURROGATE_FIT, run_id, sitting
from checkpoints.run_folder import write_json_atomic

RUN_FILES = ("run.json", "trace.jsonl", "summary.json", "results.tsv")
MECHANISM_FILES = ("record.json", "source.py")  # a run's mechanisms/<id>/: what `ablation imp` starts them from
IMP_FILES = ("report/imp.json", "report/imp.md")


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
        found += sorted(p.relative_to(root) for name in MECHANISM_FILES for p in run_dir.glob(f"mechanisms/*/{name}"))
    for frozen in sorted(p.parent for p in root.glob("imp/*/s*/summary.json")):  # finished frozen runs only
        found += [frozen.relative_to(root) / name for name in RUN_FILES]
    found += [Path(name) for name in IMP_FILES]
    return [p for p in found if (root / p).is_file()]


def pack(root: Path, out: Path) -> list[Path]:
    """Write the evidence of ``root`` to the gzipped tar ``out`` under the folder's own name; return the files."""
    files = evidence(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for rel in files:
            tar.add(Path(root) / rel, arcname=str(Path(Path(root).resolve().name) / rel))
    return files


class PackError(ValueError):
    """A file that is not an ablation's pack, or one that would write outside its folder."""


def unpack(archive: Path, dest: Path, boot: str | None = None) -> dict[str, list[str]]:
    """Extract the pack ``archive`` as the ablation folder ``dest`` (which must not exist) and make it resumable:
    a run is kept when it finished and its repeat finished in every group, or it finished in the sitting whose boot
    id is ``boot`` (default: this machine's, now); every other run is reset to pending and its folder removed.
    Returns the runs kept and reset."""
    boot = sitting()["boot"] if boot is None else boot
    dest = Path(dest)
    if dest.exists():
        raise PackError(f"{dest} exists; unpack into a new folder")
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        tops = {PurePosixPath(m.name).parts[0] for m in members if m.name}
        if len(tops) != 1 or f"{next(iter(tops))}/{MANIFEST}" not in {m.name for m in members}:
            raise PackError(f"{archive} is not an ablation's pack (one folder holding {MANIFEST})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            tar.extractall(staging, filter="data")  # refuses absolute paths, .. and links out of the folder
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    (staging / next(iter(tops))).rename(dest)
    staging.rmdir()
    manifest = json.loads((dest / MANIFEST).read_text())
    runs = manifest.get("runs", {})
    groups = manifest.get("spec", {}).get("groups", [])
    complete = {
        run.get("repeat")
        for run in runs.values()
        if all(runs.get(run_id(g, run.get("repeat", -1)), {}).get("status") == "done" for g in groups)
    }
    kept, reset = [], []
    for rid, run in sorted(runs.items()):
        same_sitting = (run.get("sitting") or {}).get("boot") == boot
        if run.get("status") == "done" and (run.get("repeat") in complete or same_sitting):
            kept.append(rid)
            continue
        reset.append(rid)
        shutil.rmtree(dest / "runs" / rid, ignore_errors=True)
        run.update(status="pending", started=None, reset_from_pack=str(archive))
    write_json_atomic(dest / MANIFEST, manifest)
    return {"kept": kept, "reset": reset}
