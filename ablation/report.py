"""`ablation report DIR`: the ablation's report regenerated from its folder alone (manifest, noise floor, run
folders, surrogate_fit.json): report/report.md, report/figures.json and the PNG plots."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ablation.collect import collect
from ablation.figures import LEVELS, REFERENCE, analyse
from ablation.harness import SURROGATE_FIT
from ablation.plots import plot_ablation_progress, plot_deltas, plot_mechanisms, plot_running_best, plot_surrogate_fit
from checkpoints.run_folder import write_atomic, write_json_atomic


def f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ci(low: float, high: float) -> str:
    return "[—]" if math.isnan(low) or math.isnan(high) else f"[{low:+.4f}, {high:+.4f}]"


def pm(summary: dict[str, Any] | None) -> str:
    if not summary or not summary["n"]:
        return "—"
    if summary["n"] == 1:
        return f"{summary['mean']:+.4f} (n = 1)"
    return f"{summary['mean']:+.4f} ± {f(summary['sd'])} {ci(summary['ci_low'], summary['ci_high'])}"


def setup_lines(data: dict[str, Any], fit: dict[str, Any] | None) -> list[str]:
    spec, manifest = data["spec"], data["manifest"]
    trainer = spec["executor"]
    if trainer.startswith("surrogate:"):
        trainer = f"**SURROGATE** ({trainer}): val_bpb served by a model fitted on real samples, not trained"
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(manifest.get("created", 0)))
    done = len(data["runs"])
    planned = len(spec["groups"]) * spec["repeats"]
    return [
        f"- trainer: {trainer}",
        f"- groups {', '.join(spec['groups'])}; {spec['repeats']} repeats planned, {done}/{planned} runs finished; "
        f"{spec['iterations']} experiments after the baseline, segments of {spec['segment']}, "
        f"{spec['budget_s']:g} s training budget, seeds {spec['seed']}..{spec['seed'] + spec['repeats'] - 1} "
        "(repeat r has the same seed in every group)",
        f"- LLM: {manifest.get('llm', spec.get('model') or 'embedded default')}",
        f"- host: {manifest.get('host', {}).get('system', '?')}; started {created}",
        *sitting_lines(manifest),
        *([f"- surrogate samples: {fit['samples']} real trainings ({fit['crashed']} crashed)"] if fit else []),
        *(growth_line(e) for e in manifest.get("extended", [])),
    ]


def sitting_lines(manifest: dict[str, Any]) -> list[str]:
    """The sittings (a machine, from one boot) the finished runs trained in, and the repeats of each; a repeat that
    spans two would compare runs measured on different machines, and is named."""
    sittings: dict[str, dict[str, Any]] = {}
    by_repeat: dict[int, set[str]] = {}
    for run in manifest.get("runs", {}).values():
        if run.get("status") != "done" or not run.get("sitting"):
            continue
        boot = run["sitting"]["boot"]
        entry = sittings.setdefault(boot, {"cpu": run["sitting"]["cpu"], "repeats": set(), "first": run["started"]})
        entry["repeats"].add(run["repeat"])
        entry["first"] = min(entry["first"], run["started"])
        by_repeat.setdefault(run["repeat"], set()).add(boot)
    split = sorted(r for r, boots in by_repeat.items() if len(boots) > 1)
    if not sittings:
        return []
    lines = [f"- trained in {len(sittings)} sitting{'s' * (len(sittings) > 1)} (a machine, from one boot):"]
    for n, entry in enumerate(sorted(sittings.values(), key=lambda e: e["first"]), 1):
        repeats = ", ".join(str(r) for r in sorted(entry["repeats"]))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["first"]))
        lines.append(f"  {n}. from {when}, {entry['cpu']}: repeats {repeats}")
    if split:
        lines.append(f"  - **repeats {', '.join(map(str, split))} span two sittings**: their runs were measured apart")
    return lines


def growth_line(e: dict[str, Any]) -> str:
    parts = [f"from {e['from']} to {e['to']} repeats"] if e["to"] != e["from"] else []
    if e.get("noise_to", e.get("noise_from")) != e.get("noise_from"):
        parts.append(f"the noise floor from {e['noise_from']} to {e['noise_to']} trainings")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["time"]))
    return f"- grown {' and '.join(parts)} on {when} (`ablation resume`; what was finished was kept)"


def main_table(analysis: dict[str, Any]) -> list[str]:
    lines = [
        "| group | runs | Δ val_bpb mean ± sd [95% CI] | confirmed Δ | vs A: mean diff [95% CI] | Wilcoxon p "
        "| permutation p | Holm p | d_z | detectable diff | kept (< noise sd) | crashes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, g in analysis["groups"].items():
        vs = g.get("vs_A")
        diff = f"{vs['mean_diff']:+.4f} {ci(vs['ci_low'], vs['ci_high'])}" if vs else "reference"
        within = f"{g['kept_improvements']} ({f(g['within_noise'])})"
        lines.append(
            f"| {group} | {g['runs']} | {pm(g['delta'])} | {pm(g['confirmed_delta'])} | {diff} "
            f"| {f(vs and vs['wilcoxon_p'], 3)} | {f(vs and vs['permutation_p'], 3)} | {f(vs and vs.get('holm_p'), 3)} "
            f"| {f(vs and vs['cohens_dz'], 2)} | {f(vs and vs.get('detectable_diff'), 3)} "
            f"| {within} | {g['crashes']}/{g['experiments']} |"
        )
    return lines


def confirmed_lines(analysis: dict[str, Any]) -> list[str]:
    """The groups against A once more, on the confirmed Δ (each run's best re-trained with fresh seeds)."""
    rows = [(g, e["vs_A_confirmed"]) for g, e in analysis["groups"].items() if "vs_A_confirmed" in e]
    if not rows:
        return []
    lines = [
        f"\n**Confirmed Δ, paired against {REFERENCE}**\n",
        "| group | pairs | mean diff [95% CI] | Wilcoxon p | permutation p | d_z |",
        "|---|---|---|---|---|---|",
    ]
    for group, vs in rows:
        lines.append(
            f"| {group} | {vs['n']} | {vs['mean_diff']:+.4f} {ci(vs['ci_low'], vs['ci_high'])} "
            f"| {f(vs['wilcoxon_p'], 3)} | {f(vs['permutation_p'], 3)} | {f(vs['cohens_dz'], 2)} |"
        )
    return lines


def baseline_lines(analysis: dict[str, Any]) -> list[str]:
    """Every group against each model-free baseline (Δ, paired by seed), Holm-adjusted over all these comparisons."""
    rows = analysis.get("vs_baselines") or []
    if not rows:
        return []
    lines = [
        "\n**Against the model-free baselines** (Δ, paired by seed; Holm over every row)\n",
        "| group | baseline | pairs | mean diff [95% CI] | Wilcoxon p | permutation p | Holm p | d_z "
        "| detectable diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['baseline']} | {r['n']} | {r['mean_diff']:+.4f} {ci(r['ci_low'], r['ci_high'])} "
            f"| {f(r['wilcoxon_p'], 3)} | {f(r['permutation_p'], 3)} | {f(r['holm_p'], 3)} "
            f"| {f(r['cohens_dz'], 2)} | {f(r['detectable_diff'], 3)} |"
        )
    return lines


def cost_table(analysis: dict[str, Any]) -> list[str]:
    head = " | ".join(f"{level} calls | {level} tokens | {level} LLM s" for level in LEVELS)
    lines = [f"| group | {head} | training s | run wall s |", "|---" * (2 + 3 * len(LEVELS) + 1) + "|"]
    for group, g in analysis["groups"].items():
        cells = " | ".join(
            f"{f(g['llm'][lv]['calls'], 1)} | {f(g['llm'][lv]['tokens'], 0)} | {f(g['llm'][lv]['latency_s'], 1)}"
            for lv in LEVELS
        )
        lines.append(f"| {group} | {cells} | {f(g['training_s'], 1)} | {f(g['wall_s'], 1)} |")
    return lines


SOURCES = ("llm", "fallback", "mechanism")


def source_lines(analysis: dict[str, Any]) -> list[str]:
    """Where each group's proposals came from, and which of them gave the kept improvements."""
    head = " | ".join(f"{s} per run | {s} kept (share)" for s in SOURCES)
    lines = [f"| group | {head} | p (llm vs fallback) |", "|---" * (2 + 2 * len(SOURCES)) + "|"]
    for group, g in analysis["groups"].items():
        sources = g.get("sources", {})
        cells = " | ".join(
            f"{f(sources[s]['per_run'], 1)} | {sources[s]['kept']} ({f(sources[s].get('kept_rate'), 2)})"
            if s in sources
            else "0 | 0"
            for s in SOURCES
        )
        lines.append(f"| {group} | {cells} | {f(sources.get('llm', {}).get('vs_fallback_p'), 3)} |")
    return lines


def mechanism_lines(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for group in ("C", "D"):
        g = analysis["groups"].get(group)
        if not g:
            continue
        lines += [
            f"\n**Group {group}**\n",
            "| mechanism | runs | segments active | calls | failed | LLM asks | mean progress per segment (bpb) "
            "| kept / rolled back |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in sorted(g["mechanisms"].items(), key=lambda kv: -kv[1]["segments"]):
            lines.append(
                f"| {name} | {m['runs']} | {m['segments']} | {m['calls']} | {m['failed']} | {m['llm_asks']} "
                f"| {f(m['mean_progress'], 5)} | {m['kept']} / {m['rolled_back']} |"
            )
    return lines


def fit_lines(fit: dict[str, Any] | None) -> list[str]:
    if not fit:
        return []
    return [
        "\n## Surrogate fit (held out)\n",
        f"- {fit['successful']} successful of {fit['samples']} real samples at {fit['budget_s']:g} s; "
        f"{fit['cv_folds']}-fold CV: R² {fit['cv_r2']:.3f} (log scale {fit['cv_r2_log']:.3f}), "
        f"RMSE {fit['cv_rmse_bpb']:.4f} bpb, MAE {fit['cv_mae_bpb']:.4f} bpb",
        f"- served noise: sd {fit['noise_sd_bpb_at_baseline']:.4f} bpb at the baseline (from {fit['noise_source']}; "
        f"replicates' sd {f(fit['replicate_sd_bpb'])}, GP noise {fit['gp_noise_sd_bpb_at_baseline']:.4f}); "
        f"RMSE / noise = {f(fit['rmse_over_noise'], 2)}",
        f"- crash rule: CV accuracy {f(fit['crash_cv_accuracy'], 3)} against a crash rate of "
        f"{fit['crash_base_rate']:.3f}",
        "\n![surrogate fit](surrogate_fit.png)",
    ]


def load_lines(load: dict[str, Any]) -> list[str]:
    """The machine's other CPU use during the trainings; nothing where no training recorded it (the surrogate
    trainer, or trainings recorded before the executor measured it)."""
    if not load["measured"]:
        return []
    lines = [
        f"\nMachine load: {load['measured']} of {load['trainings']} trainings recorded the share of the CPU that "
        f"everything else used while they ran — median {load['median']:.1%}, largest {load['max']:.1%}; "
        f"{len(load['loaded'])} above {load['threshold']:.0%}"
        + (":" if load["loaded"] else " (a fixed wall-clock budget measures the machine too).")
    ]
    lines += [f"- {where}: {share:.1%}" for where, share in load["loaded"][:20]]
    if len(load["loaded"]) > 20:
        lines.append(f"- … and {len(load['loaded']) - 20} more (figures.json)")
    if load.get("set_aside"):
        lines.append(
            f"\n{load['retrained']} trainings were trained again after {load['set_aside']} attempts set aside as "
            "contended (everything else used more than the `--retrain-above` share while they ran); the shares and "
            "figures above are those of the attempts kept."
        )
    return lines


def write_ablation_report(root: Path) -> Path:
    root = Path(root)
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(root)
    analysis = analyse(data)
    fit_path = root / SURROGATE_FIT
    fit = json.loads(fit_path.read_text()) if fit_path.exists() else None
    plot_running_best(analysis, out / "running_best.png")
    plot_ablation_progress(data, analysis, out / "progress.png")
    plot_deltas(data, analysis, out / "deltas.png")
    has_mechanisms = plot_mechanisms(data, out / "mechanisms.png")
    if fit:
        plot_surrogate_fit(fit, out / "surrogate_fit.png")
    noise = analysis["noise"]
    lines = [
        f"# Ablation report: {root.name}\n",
        *setup_lines(data, fit),
        "\n## Noise floor\n",
        f"The baseline configuration trained {noise['n']} times with other seeds ({noise['crashes']} crashed): "
        f"mean {f(noise['mean'])}, sd {f(noise['sd'])} bpb. Kept improvements smaller than this sd are counted in "
        "brackets below and drawn hollow in the progress chart.",
        *load_lines(data["machine_load"]),
        f"\n## Δ val_bpb (best − baseline; negative is better), paired against group {REFERENCE}\n",
        *main_table(analysis),
        "\n*confirmed Δ*: each run's best configuration re-trained with fresh seeds, minus the noise-floor mean "
        "(no selection on noise). *Holm p*: the permutation p-values adjusted for testing every group against "
        f"{REFERENCE} (Holm-Bonferroni). *detectable diff*: the smallest difference from {REFERENCE} that a "
        "two-sided paired t-test at the 5 % level would find with 80 % power at this number of pairs and this "
        "spread of the differences — what a null result rules out.",
        *confirmed_lines(analysis),
        *baseline_lines(analysis),
        "\n![running best](running_best.png)\n\n![deltas](deltas.png)\n\n![progress](progress.png)",
        "\n## LLM use and time per level (means per run)\n",
        *cost_table(analysis),
        "\n## Where the proposals came from\n",
        "Experiments per run by the source of their proposal (*llm*: a valid answer of the model; *fallback*: the "
        "recorded seeded one-parameter step taken when the model's answer was refused; *mechanism*: a mechanism's own "
        "proposal), and how many kept improvements each source gave over all runs, with their share of the source's "
        "experiments. *p (llm vs fallback)*: Fisher's exact test of equal shares, each experiment taken as an "
        "independent draw (a sequential search only approximates that).\n",
        *source_lines(analysis),
    ]
    if has_mechanisms:
        lines += [
            "\n## Mechanisms (Level 2)\n",
            "A segment's progress is the drop of the best val_bpb during it; the first segment's is measured from "
            "the baseline.",
            *mechanism_lines(analysis),
            "\n![mechanisms](mechanisms.png)",
        ]
    lines += fit_lines(fit)
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    write_json_atomic(
        out / "figures.json", {"analysis": analysis, "surrogate_fit": fit, "machine_load": data["machine_load"]}
    )
    return out / "report.md"
