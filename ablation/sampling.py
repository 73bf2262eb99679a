"""Real training samples of the search space, the data the surrogate is fitted on.

A plan of points: a Latin hypercube over the whole space ("global"), one in a box around the default configuration
("local": where searches that change 1-3 parameters at a time spend their trials), and the default configuration
trained with different seeds ("replicate": the noise the surrogate must reproduce). Points are repaired to satisfy
the batch constraint of train.py (`trials.constraints`). Each point is trained for real by
gpt/train.py through the project's `LocalExecutor` and appended to a CSV, rewritten atomically after every point, so
an interrupted collection resumes where it stopped and the file is always readable.

    python -m graphs.bilevel ablation sample --points 48 --budget-s 15
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scipy.stats import qmc

from checkpoints.run_folder import write_atomic
from mechanisms.space import Param, SearchSpace
from trials.candidate import rewrite_constants
from trials.launcher import TRAIN_PATH, Executor, LocalExecutor, TrainerSettings, Trial
from trials.surrogate import read_samples

DEFAULT_CSV = Path(__file__).resolve().parent / "data" / "surrogate_samples.csv"
RESULT_FIELDS = ("returncode", "error", "val_bpb", "training_seconds", "num_steps", "peak_memory_mb", "wall_seconds")
META_FIELDS = (
    "point",
    "design",
    "seed",
    "budget_s",
    "timeout_s",
    "memory_gb",
    "load_avg",
    "evaluator_sha256",
    "split_sha256",
)


def from_unit(p: Param, u: float) -> Any:
    """The value at position ``u`` in [0, 1]: numerics as `Param.from_unit`, choices and bools by equal cells."""
    if p.kind in ("int", "float"):
        return p.from_unit(u)
    values = [False, True] if p.kind == "bool" else list(p.choices)
    return values[min(len(values) - 1, int(u * len(values)))]


def unit_centre(p: Param) -> float:
    """The position of the default: `Param.to_unit` for numerics, the middle of its cell for choices and bools."""
    if p.kind in ("int", "float"):
        return p.to_unit(p.default)
    values = [False, True] if p.kind == "bool" else list(p.choices)
    index = next(i for i, v in enumerate(values) if v == p.default and type(v) is type(p.default))
    return (index + 0.5) / len(values)


def design(space: SearchSpace, n: int, seed: int, half_width: float | None = None) -> list[dict[str, Any]]:
    """``n`` configurations of a Latin hypercube over the free parameters (declared-frozen ones keep the default),
    over the whole space, or over a box of ``half_width`` in unit space around the default; each repaired to satisfy
    train.py's batch constraint (a point the trainer refuses outright teaches the surrogate nothing)."""
    free = [p for p in space if not p.frozen]
    if n <= 0:
        return []
    units = qmc.LatinHypercube(d=len(free), seed=seed).random(n)
    points = []
    for row in units:
        point = space.defaults()
        for p, u in zip(free, row, strict=True):
            if half_width is not None:
                u = min(1.0, max(0.0, unit_centre(p) + (2 * u - 1) * half_width))
            point[p.name] = from_unit(p, float(u))
        points.append(space.repair(point))
    return points


def plan(
    space: SearchSpace, points: int, replicates: int, seed: int, local_frac: float = 0.5, half_width: float = 0.2
) -> list[dict[str, Any]]:
    """The whole plan, interleaved so that a collection stopped early is still balanced between the designs."""
    n_local = round(points * local_frac)
    global_points = design(space, points - n_local, seed)
    local_points = design(space, n_local, seed + 1, half_width)
    rows: list[dict[str, Any]] = []
    for i in range(max(len(global_points), len(local_points))):
        for name, pool in (("global", global_points), ("local", local_points)):
            if i < len(pool):
                rows.append({"design": name, "params": pool[i]})
    every = max(1, len(rows) // max(1, replicates))
    for r in range(replicates):
        rows.insert(min(len(rows), r * (every + 1)), {"design": "replicate", "params": space.defaults()})
    return [{**row, "point": f"p{i:03d}", "seed": 1000 + i} for i, row in enumerate(rows)]


def write_samples(path: Path, rows: list[dict[str, Any]], names: tuple[str, ...]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*META_FIELDS, *names, *RESULT_FIELDS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in writer.fieldnames})
    write_atomic(Path(path), out.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) and not _looks_like_json(value) else json.dumps(value)


def _looks_like_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def sample_row(
    point: Mapping[str, Any],
    outcome: Mapping[str, Any],
    settings: TrainerSettings,
    load_avg: float | None = None,
    memory_gb: float | None = None,
) -> dict[str, Any]:
    result = outcome.get("result", {}) if outcome.get("ok") else {}
    return {
        "point": point["point"],
        "design": point["design"],
        "seed": point["seed"],
        "budget_s": settings.budget_s,
        "timeout_s": settings.timeout_s,
        "memory_gb": memory_gb,
        "load_avg": load_avg,
        "evaluator_sha256": outcome.get("evaluator_sha256"),  # computed by the executor, not the training's report
        "split_sha256": result.get("split_sha256"),
        **point["params"],
        "returncode": outcome.get("returncode"),
        "error": None if outcome.get("ok") else str(outcome.get("error", "crashed"))[:300],
        **{k: result.get(k) for k in ("val_bpb", "training_seconds", "num_steps", "peak_memory_mb")},
        "wall_seconds": outcome.get("wall_seconds"),
    }


def check_compatible(rows: list[dict[str, Any]], planned: list[dict[str, Any]], budget_s: float) -> None:
    """Refuse to extend a CSV collected with another budget or another plan (its points would not be these)."""
    by_id = {p["point"]: p for p in planned}
    for row in rows:
        if row.get("budget_s") != budget_s:
            raise ValueError(f"{row['point']} was trained with a {row.get('budget_s')} s budget, not {budget_s} s")
        point = by_id.get(row["point"])
        if point is None or any(row.get(k) != v for k, v in point["params"].items()):
            raise ValueError(f"{row['point']} is not the point of this plan: same --points/--replicates/--seed?")


def collect_samples(
    csv_path: Path,
    work_dir: Path,
    points: int,
    replicates: int,
    budget_s: float,
    seed: int = 0,
    executor: Executor | None = None,
    kill_after_s: float | None = None,
    memory_gb: float | None = None,
    log: Callable[[str], None] = print,
    before_each: Callable[[], None] = lambda: None,
    retrain_above_load: float | None = None,
) -> list[dict[str, Any]]:
    """Train every planned point not yet in ``csv_path`` and append it; returns all rows. ``memory_gb`` is the
    memory cap the caller set (recorded only); ``before_each`` runs before every training (the CLI waits there while
    another engineer's benchmark runs). With ``retrain_above_load``, rows measured while the machine's load average
    was above it (or unknown) are moved to the archive CSV next to ``csv_path`` and trained again: under a fixed
    wall-clock budget a loaded machine trains fewer steps, and those rows measure the load, not the configuration."""
    source = TRAIN_PATH.read_text()
    space = SearchSpace.from_train_source(source)
    rows = read_samples(csv_path)
    planned = plan(space, points, replicates, seed)
    check_compatible(rows, planned, budget_s)
    if retrain_above_load is not None:
        rows = archive_loaded(csv_path, rows, retrain_above_load, space.names, log)
    done = {row["point"] for row in rows}
    executor = executor or LocalExecutor()
    todo = [p for p in planned if p["point"] not in done]
    for i, point in enumerate(todo, start=1):
        settings = TrainerSettings(budget_s=budget_s, seed=point["seed"], kill_after_s=kill_after_s)
        folder = Path(work_dir).resolve() / point["point"]
        before_each()
        write_atomic(folder / "train.py", rewrite_constants(source, point["params"]))
        start, load = time.monotonic(), round(os.getloadavg()[0], 2)  # the machine may be shared: keep its load
        outcome = executor.run(Trial(point["point"], folder), settings)
        rows.append(sample_row(point, outcome, settings, load, memory_gb))
        write_samples(csv_path, rows, space.names)
        bpb = outcome.get("result", {}).get("val_bpb") if outcome.get("ok") else None
        shown = f"val_bpb {bpb:.4f}" if isinstance(bpb, float) and math.isfinite(bpb) else outcome.get("error")
        log(f"{point['point']} ({point['design']}) {i}/{len(todo)}: {shown}  [{time.monotonic() - start:.0f} s]")
    return rows


def archive_path(csv_path: Path) -> Path:
    return Path(csv_path).with_name(Path(csv_path).stem + "_loaded.csv")


def archive_loaded(
    csv_path: Path, rows: list[dict[str, Any]], max_load: float, names: tuple[str, ...], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Move the rows measured above ``max_load`` (or with no load recorded) to the archive; return the others."""
    loaded = [r for r in rows if not isinstance(r.get("load_avg"), int | float) or r["load_avg"] > max_load]
    if not loaded:
        return rows
    archive = archive_path(csv_path)
    write_samples(archive, [*read_samples(archive), *loaded], names)
    kept = [r for r in rows if r not in loaded]
    write_samples(csv_path, kept, names)
    log(f"{len(loaded)} samples measured above load {max_load:g} moved to {archive}; they are trained again")
    return kept
