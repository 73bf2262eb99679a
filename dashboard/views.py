"""What each page shows, as template contexts built from the readers: the index of served runs and ablations, a
run, one experiment, one mechanism, a run's LLM calls, an ablation, two runs side by side."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from dashboard import ablation_charts, charts, experiment, graph_svg, llm_calls, mechanism, staircase
from dashboard.ablation_folder import load_ablation
from dashboard.folders import Folder, Refused, Served, kind_of
from dashboard.run_folder import RunData, age, bpb, load_run
from dashboard.trace import mapping


class NotFound(Exception):
    """A page whose subject does not exist (an unknown experiment or mechanism id)."""


def run_url(key: str, page: str = "run", item: str | None = None) -> str:
    item_part = f"/{quote(item, safe='@')}" if item else ""
    return f"/{page}{item_part}/{quote(key, safe='/')}"


def open_run(served: Served, key: str) -> RunData:
    folder = served.folder(key)
    if kind_of(folder) != "run":
        raise NotFound(f"{key} is not a run folder (it has neither run.json nor trace.jsonl)")
    return load_run(served, folder)


def badge(run: RunData) -> dict[str, str]:
    if not run.active:
        return {}
    use = run.mechanisms.get(run.active, {})
    segments = ", ".join(str(s) for s in use.get("segments", []))
    return {"propose": f"{run.active} · {use.get('calls', 0)} calls · segments {segments or '—'}"}


def graphs(run: RunData | None) -> dict[str, Any]:
    tops = graph_svg.topologies()
    if isinstance(tops, str):
        return {"error": tops}
    inner_badges = badge(run) if run else {}
    return {
        "inner": graph_svg.draw(tops["inner"], badges=inner_badges, current=run.inner_step if run else None),
        "outer": graph_svg.draw(tops["outer"], current=run.outer_step if run and run.segments else None),
        "mermaid": {name: t.mermaid for name, t in tops.items()},
    }


def summary_row(run: RunData) -> dict[str, Any]:
    best = run.best
    baseline = run.baseline
    best_bpb = bpb(best) if best else None
    return {
        "key": run.key,
        "name": run.folder.name,
        "url": run_url(run.key),
        "level": run.config.get("level", "?"),
        "done": len(run.experiments),
        "planned": run.planned,
        "best": best_bpb,
        "best_id": best.get("id") if best else None,
        "baseline": baseline,
        "delta": best_bpb - baseline if best_bpb is not None and baseline is not None else None,
        "counts": run.counts(),
        "finished": run.finished,
        "age": age(run),
        "active": run.active,
        "pending": run.pending,
        "executor": run.config.get("executor", "?"),
    }


def index(served: Served) -> dict[str, Any]:
    runs, ablations, problems = [], [], []
    for kind, folder in served.discover():
        try:
            if kind == "run":
                runs.append(summary_row(load_run(served, folder)))
            else:
                data = load_ablation(folder, analyse_now=False)
                ablations.append(
                    {
                        "key": folder.key,
                        "name": folder.name,
                        "url": run_url(folder.key, "ablation"),
                        "spec": data.spec,
                        "runs": data.runs,
                        "notes": data.notes,
                    }
                )
        except (OSError, Refused, ValueError) as e:
            problems.append(f"{folder.key}: {e}")
    roots = [{"index": i, "path": str(p)} for i, p in enumerate(served.roots)]
    return {
        "runs": runs,
        "ablations": ablations,
        "problems": problems,
        "roots": roots,
        "watch": [str(i) for i in range(len(served.roots))],
    }


def run_page(served: Served, key: str) -> dict[str, Any]:
    run = open_run(served, key)
    nodes = llm_calls.per_node(run.trace)
    return {
        "run": run,
        "row": summary_row(run),
        "graphs": graphs(run),
        "staircase": staircase.staircase(run, link=lambda eid: run_url(key, "experiment", eid)),
        "noise_text": staircase.noise_band(run)[1],
        "timeline": charts.timeline(run, link=lambda mid: run_url(key, "mechanism", mid)),
        "llm": nodes,
        "llm_totals": llm_calls.totals(nodes),
        "parent": parent_ablation(served, run.folder),
        "watch": [key],
    }


def parent_ablation(served: Served, folder: Folder) -> dict[str, str] | None:
    parts = folder.key.split("/")
    if len(parts) >= 3 and parts[-2] == "runs":
        key = "/".join(parts[:-2])
        try:
            if kind_of(served.folder(key)) == "ablation":
                return {"key": key, "url": run_url(key, "ablation"), "name": parts[-3]}
        except (Refused, FileNotFoundError):
            return None
    return None


def experiment_page(served: Served, key: str, experiment_id: str) -> dict[str, Any]:
    run = open_run(served, key)
    found = experiment.detail(run, experiment_id)
    if found is None:
        raise NotFound(f"no experiment {experiment_id} in {key}")
    ids = [e["id"] for e in run.experiments + run.pending]
    i = ids.index(experiment_id)
    record = found["record"]
    previous_best = staircase.running_best_before(run.experiments, record)
    return {
        "run": run,
        "e": record,
        **found,
        "split_svg": charts.time_split(found["timing"]),
        "previous": ids[i - 1] if i > 0 else None,
        "next": ids[i + 1] if i + 1 < len(ids) else None,
        "baseline": run.baseline,
        "best_before": previous_best,
        "watch": [key],
    }


def mechanism_page(served: Served, key: str, mechanism_id: str) -> dict[str, Any]:
    run = open_run(served, key)
    found = mechanism.detail(run, mechanism_id)
    if found is None:
        raise NotFound(f"no mechanism {mechanism_id} in {key}")
    return {"run": run, "m": found["use"], **found, "watch": [key]}


def llm_page(served: Served, key: str) -> dict[str, Any]:
    run = open_run(served, key)
    nodes = llm_calls.per_node(run.trace)
    calls = llm_calls.calls(run.trace)
    names = [n["node"] for n in nodes]
    return {
        "run": run,
        "nodes": nodes,
        "totals": llm_calls.totals(nodes),
        "latency_svg": charts.latency(calls, names),
        "node_classes": {n: f"node-{i % staircase.FAMILY_CLASSES}" for i, n in enumerate(names)},
        "failures": llm_calls.failures(run.trace),
        "watch": [key],
    }


def ablation_page(served: Served, key: str) -> dict[str, Any]:
    folder = served.folder(key)
    if kind_of(folder) != "ablation":
        raise NotFound(f"{key} is not an ablation folder (no ablation.json)")
    data = load_ablation(folder)
    groups = mapping(mapping(data.analysis).get("groups"))
    noise = data.noise or mapping(data.analysis).get("noise")
    noise_sd = noise.get("sd") if isinstance(noise, dict) else None
    return {
        "a": data,
        "groups": groups,
        "noise": noise,
        "forest": ablation_charts.forest(groups, data.runs, noise_sd if isinstance(noise_sd, float) else None),
        "curves": ablation_charts.curves(groups),
        "watch": [key],
    }


def compare_page(served: Served, keys: list[str]) -> dict[str, Any]:
    runs = [open_run(served, k) for k in keys]
    view = staircase.shared_view(runs)
    sides = []
    for run in runs:
        nodes = llm_calls.per_node(run.trace)
        link = functools.partial(run_url, run.key, "experiment")
        sides.append(
            {
                "run": run,
                "row": summary_row(run),
                "staircase": staircase.staircase(run, y_view=view, link=link),
                "llm_totals": llm_calls.totals(nodes),
            }
        )
    settings = sorted({k for run in runs for k in run.config} - {"run_dir", "started"})
    differing = [
        (k, [run.config.get(k) for run in runs]) for k in settings if len({repr(r.config.get(k)) for r in runs}) > 1
    ]
    return {"sides": sides, "differing": differing, "watch": keys}
