"""`ablation imp DIR`: imp@k, the improvement a mechanism produces on its own, frozen, in k steps.

Every mechanism an ablation's outer loops kept (a `compare` event "kept" in a run's trace; its record in the run's
mechanisms/<id>/ folder: built-in, composed or generated) runs frozen — the inner loop alone, no outer loop — for k
experiments after the baseline configuration, on held-out seeds (never a repeat's, noise-floor or confirmation seed),
on the surrogate executor. Its imp@k on a seed is best − start in val_bpb (negative is an improvement; start is the
baseline configuration's val_bpb at that seed, the same for every mechanism). Two references run on the same seeds:
`llm_greedy` (the model alone) and `local_search` (the seeded one-parameter step alone, the `local` group); every
mechanism is compared with each, paired by seed, with bootstrap intervals and Holm-adjusted permutation p-values.

    DIR/imp/<mechanism>/s<seed>/    one frozen run per mechanism and seed (resumable, skipped when finished)
    DIR/report/imp.json, imp.md     the figures and the table
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablation.harness import Ablation, LLMFor
from ablation.stats import holm, paired_comparison, summarise
from checkpoints.run_folder import Ledger, write_atomic, write_json_atomic
from graphs.run_config import RunConfig
from graphs.runner import execute
from trials.launcher import Executor

HELD_OUT_SEED = 30_000  # far from the repeats' (0...), the noise floor's (10 000...) and the confirmations' (20 000...)
REFERENCES = ("llm_greedy", "local_search")
DEFAULT_SURROGATE = Path("ablation/data/surrogate_samples.csv")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Candidate:
    """A mechanism to measure: how `--mechanism` names it (a built-in name, a record.json, a source.py)."""

    key: str  # its folder under imp/: name-sha8
    mechanism_id: str
    origin: str
    start: str
    kept_in: list[str] = field(default_factory=list)


def reference(name: str) -> Candidate:
    from nodes.mechanism_loader import builtin_record

    record = builtin_record(name)
    return Candidate(record["id"].replace("@", "-"), record["id"], "builtin", name)


def kept_mechanisms(root: Path) -> list[Candidate]:
    """Every mechanism some run's outer loop kept, once (the runs that kept it listed), in order of first keeping."""
    found: dict[str, Candidate] = {}
    for run_dir in sorted((Path(root) / "runs").glob("*/")):
        for event in Ledger(run_dir).events("compare"):
            if event.get("event") != "kept":
                continue
            mid = str(event["mechanism"])
            if mid in found:
                if run_dir.name not in found[mid].kept_in:  # a run may keep the same mechanism twice
                    found[mid].kept_in.append(run_dir.name)
                continue
            folder = run_dir / "mechanisms" / mid.replace("@", "-")
            record = json.loads((folder / "record.json").read_text())
            start = folder / ("source.py" if record["origin"] == "generated" else "record.json")
            found[mid] = Candidate(mid.replace("@", "-"), mid, record["origin"], str(start), [run_dir.name])
    return list(found.values())


@dataclass
class ImpSettings:
    k: int = 10
    seeds: int = 10
    executor: str = f"surrogate:{DEFAULT_SURROGATE}"
    extra: list[str] = field(default_factory=list)  # built-ins measured as well (e.g. cma_es, tpe)


def surrogate_budget(executor: str) -> float:
    from trials.surrogate import SurrogateExecutor

    return SurrogateExecutor.load(Path(executor.split(":", 1)[1])).model.budget_s


def frozen_run(
    ablation: Ablation,
    candidate: Candidate,
    seed: int,
    settings: ImpSettings,
    budget_s: float,
    chat_for: LLMFor,
    executor: Executor,
) -> dict[str, Any]:
    """One frozen run of ``candidate`` (k experiments after the baseline, the inner loop alone); its summary."""
    run_dir = ablation.root / "imp" / candidate.key / f"s{seed}"
    if (run_dir / "summary.json").exists():
        return dict(json.loads((run_dir / "summary.json").read_text()))
    config = (
        RunConfig.load(run_dir)
        if (run_dir / "run.json").exists()
        else RunConfig(
            run_dir=str(run_dir),
            level="1",
            iterations=settings.k,
            segment=settings.k,
            budget_s=budget_s,
            seed=seed,
            model=ablation.spec.model,
            base_url=ablation.spec.base_url,
            mechanism=candidate.start,
            executor=settings.executor,
            llm_attempts=ablation.spec.llm_attempts,
        )
    )
    execute(config, llm=chat_for(config), executor=executor, inner_only=True)
    return dict(json.loads((run_dir / "summary.json").read_text()))


def measure(
    root: Path,
    settings: ImpSettings,
    *,
    llm_for: LLMFor | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every frozen run and return the figures (also written to report/imp.json and imp.md)."""
    from trials.surrogate import SurrogateExecutor

    if not settings.executor.startswith("surrogate:"):
        raise ValueError("imp@k runs on the surrogate executor (--executor surrogate:PATH)")
    ablation = Ablation.open(root)
    budget_s = surrogate_budget(settings.executor)
    executor = SurrogateExecutor.load(Path(settings.executor.split(":", 1)[1]))
    kept = kept_mechanisms(ablation.root)
    candidates = [reference(n) for n in dict.fromkeys([*REFERENCES, *settings.extra])] + kept
    seeds = [HELD_OUT_SEED + j for j in range(settings.seeds)]
    values: dict[str, list[float | None]] = {}
    with ablation.llms(llm_for) as chat_for:
        for candidate in candidates:
            values[candidate.key] = []
            for seed in seeds:
                log(f"imp@{settings.k}: {candidate.mechanism_id}, seed {seed}")
                summary = frozen_run(ablation, candidate, seed, settings, budget_s, chat_for, executor)
                values[candidate.key].append(summary.get("delta_bpb"))
    figures = analyse(candidates, values, seeds, settings, len(kept), root=ablation.root)
    out = ablation.root / "report"
    write_json_atomic(out / "imp.json", figures)
    write_atomic(out / "imp.md", table(figures))
    return figures


def analyse(
    candidates: list[Candidate],
    values: dict[str, list[float | None]],
    seeds: list[int],
    settings: ImpSettings,
    kept: int,
    root: Path | None = None,
) -> dict[str, Any]:
    """The figures; paths are shown relative to the ablation folder (``root``) and the project, so the same
    measurement reads the same on every machine."""
    refs = {name: reference(name).key for name in REFERENCES}
    rows: dict[str, dict[str, Any]] = {}
    for c in candidates:
        got = [v for v in values[c.key] if v is not None]
        row: dict[str, Any] = {**asdict(c), "imp": values[c.key], "summary": summarise(got).to_dict()}
        row["start"] = _relative(row["start"], root)
        for ref_name, ref_key in refs.items():
            if c.key == ref_key:
                continue
            pairs = [
                (a, b) for a, b in zip(values[c.key], values[ref_key], strict=True) if a is not None and b is not None
            ]
            if len(pairs) >= 2:
                row[f"vs_{ref_name}"] = paired_comparison([a for a, _ in pairs], [b for _, b in pairs]).to_dict()
        rows[c.key] = row
    for ref_name in REFERENCES:
        adjusted = holm({k: r[f"vs_{ref_name}"]["permutation_p"] for k, r in rows.items() if f"vs_{ref_name}" in r})
        for key, p in adjusted.items():
            rows[key][f"vs_{ref_name}"]["holm_p"] = p
    return {
        "k": settings.k,
        "seeds": seeds,
        "executor": surrogate_shown(settings.executor),
        "surrogate_sha256": _sha256(Path(settings.executor.split(":", 1)[1])),
        "kept_mechanisms": kept,
        "mechanisms": rows,
    }


def surrogate_shown(executor: str) -> str:
    """``surrogate:PATH`` with PATH relative to the project when it lies inside it."""
    return f"surrogate:{_relative(executor.split(':', 1)[1], PROJECT_ROOT)}"


def _relative(path: str, root: Path | None) -> str:
    if root is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _f(value: Any, digits: int = 4, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _vs(row: dict[str, Any], ref: str) -> str:
    vs = row.get(f"vs_{ref}")
    if not vs:
        return "reference" if row["start"] == ref else "—"
    return f"{_f(vs['mean_diff'])} [{_f(vs['ci_low'])}, {_f(vs['ci_high'])}], Holm p {_f(vs.get('holm_p'), 3, False)}"


def table(figures: dict[str, Any]) -> str:
    k, n = figures["k"], len(figures["seeds"])
    lines = [
        f"# imp@{k}: each mechanism frozen, {k} experiments from the baseline configuration\n",
        f"- {n} held-out seeds ({figures['seeds'][0]}...{figures['seeds'][-1]}), the same for every mechanism; "
        f"trainer **SURROGATE** ({figures['executor']}, sha256 {figures.get('surrogate_sha256') or '—'}): "
        "val_bpb served by a model fitted on real trainings",
        f"- {figures['kept_mechanisms']} mechanisms kept by the ablation's outer loops; imp@{k} = best − start "
        "(val_bpb; negative is an improvement); paired differences against each reference at the same seeds, "
        "bootstrap 95 % CI, permutation p Holm-adjusted over the mechanisms\n",
        f"| mechanism | origin | kept in | runs | imp@{k} mean ± sd [95% CI] | vs llm_greedy | vs local_search |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in figures["mechanisms"].values():
        s = row["summary"]
        imp = f"{_f(s['mean'])} ± {_f(s['sd'], sign=False)} [{_f(s['ci_low'])}, {_f(s['ci_high'])}]"
        kept_in = ", ".join(row["kept_in"][:3]) + (f" (+{len(row['kept_in']) - 3})" if len(row["kept_in"]) > 3 else "")
        role = kept_in or ("reference" if row["start"] in REFERENCES else "added")
        lines.append(
            f"| {row['mechanism_id']} | {row['origin']} | {role} | {s['n']} | {imp} "
            f"| {_vs(row, 'llm_greedy')} | {_vs(row, 'local_search')} |"
        )
    return "\n".join(lines) + "\n"
