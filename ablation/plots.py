"""The report's PNG plots, drawn from `collect` data and `figures.analyse` numbers only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ablation.figures import family, group_runs  # noqa: E402

COLOURS = {
    "A": "#264653",
    "B": "#2a9d8f",
    "C": "#e76f51",
    "D": "#f4a261",
    "random": "#8d99ae",
    "tpe": "#6a4c93",
    "local": "#b5838d",
    "cmaes": "#3a86ff",
    "centaur": "#ff006e",
}


def colour(group: str) -> str:
    return COLOURS.get(group, "#333333")


def plot_running_best(analysis: dict[str, Any], path: Path) -> None:
    """Running best (delta to the baseline) per iteration, mean over repeats with a bootstrap 95% band."""
    fig, ax = plt.subplots(figsize=(9, 5))
    sd = analysis["noise"]["sd"]
    if not math.isnan(sd):
        ax.axhspan(-sd, sd, color="#dddddd", alpha=0.6, label=f"noise floor ±1 sd ({sd:.4f})")
    for group, entry in analysis["groups"].items():
        c = entry["curve"]
        xs = np.arange(len(c["mean"]))
        ax.plot(xs, c["mean"], color=colour(group), label=f"{group} (n={entry['runs']})", lw=2)
        ax.fill_between(xs, c["low"], c["high"], color=colour(group), alpha=0.15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("experiment (0 = baseline)")
    ax.set_ylabel("best val_bpb - baseline val_bpb")
    ax.set_title("Running best per iteration: mean over repeats, 95% bootstrap band")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation_progress(data: dict[str, Any], analysis: dict[str, Any], path: Path) -> None:
    """autoresearch's progress chart per group, every repeat overlaid: discarded experiments in grey, kept
    improvements in colour (hollow when smaller than the noise floor's sd), each repeat's running best as a step."""
    by_group = group_runs(data)
    sd = analysis["noise"]["sd"]
    cols = min(3, len(by_group))
    rows = math.ceil(len(by_group) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), sharey=True, squeeze=False)
    bests = [r["best_curve"][-1] - r["baseline_bpb"] for r in data["runs"] if r["best_curve"] and r["baseline_bpb"]]
    low = min(bests + [-3 * sd if not math.isnan(sd) else -0.01]) * 1.15
    high = max(abs(low) * 0.6, 4 * sd if not math.isnan(sd) else 0.01)
    for ax, (group, runs) in zip(axes.flat, by_group.items(), strict=False):
        for run in runs:
            base = run["baseline_bpb"]
            if base is None:
                continue
            done = [(i, b - base) for i, b, status in run["points"] if status == "discard" and b is not None]
            ax.scatter([p[0] for p in done], [min(p[1], high) for p in done], s=6, color="#c0c0c0", zorder=1)
            crashed = [i for i, _, status in run["points"] if status == "crash"]
            ax.scatter(crashed, [high * 0.97] * len(crashed), s=10, marker="x", color="#b03030", lw=0.7, zorder=2)
            for imp in run["improvements"]:
                hollow = not math.isnan(sd) and imp["gain"] < sd
                ax.scatter(
                    imp["iteration"],
                    imp["val_bpb"] - base,
                    s=22,
                    zorder=3,
                    edgecolors=colour(group),
                    facecolors="none" if hollow else colour(group),
                )
            curve = [b - base if b is not None else math.nan for b in run["best_curve"]]
            ax.step(range(len(curve)), curve, where="post", color=colour(group), lw=0.8, alpha=0.6)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(low, high)
        crashes = sum(status == "crash" for r in runs for _, _, status in r["points"])
        ax.set_title(f"group {group}: {len(runs)} repeats, {crashes} crash{'es' if crashes != 1 else ''}", fontsize=10)
        ax.set_xlabel("experiment")
    for ax in axes.flat[len(by_group) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("val_bpb - baseline (clipped above)")
    fig.suptitle(
        "Kept improvements (filled; hollow: smaller than the noise sd), running best per repeat; "
        "grey: discarded, red x at the top: crashed"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mechanisms(data: dict[str, Any], path: Path, groups: tuple[str, ...] = ("C", "D")) -> bool:
    """Which mechanism proposed each experiment, per run of the Level-2 groups; False when there is none."""
    runs = sorted((r for r in data["runs"] if r["group"] in groups), key=lambda r: (r["group"], r["repeat"]))
    if not runs:
        return False
    families = sorted({family(p) for r in runs for p in r["proposers"] if p})
    index = {name: i for i, name in enumerate(families)}
    width = max(len(r["proposers"]) for r in runs)
    grid = np.full((len(runs), width), np.nan)
    for row, run in enumerate(runs):
        for col, proposer in enumerate(run["proposers"]):
            if proposer:
                grid[row, col] = index[family(proposer)]
    tab10 = plt.get_cmap("tab10")
    cmap = ListedColormap([tab10(i % 10) for i in range(max(1, len(families)))])
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(runs) + 1.6))
    ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(families) - 0.5, interpolation="nearest")
    ax.set_yticks(range(len(runs)), [r["id"] for r in runs], fontsize=7)
    ax.set_xlabel("experiment")
    ax.set_title("Mechanism activity: the propose mechanism of each experiment (Level-2 groups)")
    handles = [Patch(color=cmap(i), label=name) for name, i in index.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_deltas(data: dict[str, Any], analysis: dict[str, Any], path: Path) -> None:
    """Each repeat's delta per group (dots), the mean with its 95% CI, and the confirmed delta (diamonds)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sd = analysis["noise"]["sd"]
    if not math.isnan(sd):
        ax.axhspan(-sd, sd, color="#dddddd", alpha=0.6, label="noise floor ±1 sd")
    for x, (group, runs) in enumerate(group_runs(data).items()):
        deltas = [r["delta"] for r in runs if r["delta"] is not None]
        jitter = np.linspace(-0.12, 0.12, len(deltas)) if len(deltas) > 1 else [0.0]
        ax.scatter(x + np.asarray(jitter), deltas, s=14, color=colour(group), alpha=0.7)
        d = analysis["groups"][group]["delta"]
        if d["n"]:
            ax.errorbar(
                x + 0.25,
                d["mean"],
                yerr=None if d["n"] < 2 else [[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]],
                fmt="o",
                color="black",
                capsize=4,
            )
        confirmed = analysis["groups"][group]["confirmed_delta"]
        if confirmed and confirmed["n"]:
            ax.scatter(x + 0.38, confirmed["mean"], marker="D", color=colour(group), edgecolors="black", zorder=3)
    ax.set_xticks(range(len(analysis["groups"])), list(analysis["groups"]))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("best - baseline val_bpb")
    ax.set_title("Delta per repeat; black: mean and 95% CI; diamond: best re-trained with fresh seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_surrogate_fit(fit: dict[str, Any], path: Path) -> None:
    """Cross-validated prediction against the real val_bpb of each sample, with the noise sd as a band."""
    pairs = np.asarray(fit["cv_predictions"])
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = float(pairs.min()), float(pairs.max())
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    sd = fit["noise_sd_bpb_at_baseline"]
    ax.fill_between([lo, hi], [lo - sd, hi - sd], [lo + sd, hi + sd], color="#dddddd", label=f"±{sd:.4f} (noise sd)")
    ax.scatter(pairs[:, 0], pairs[:, 1], s=14, color="#264653")
    ax.set_xlabel("real val_bpb")
    ax.set_ylabel(f"{fit['cv_folds']}-fold held-out prediction")
    ax.set_title(f"Surrogate fit: R² {fit['cv_r2']:.2f} held out, n={fit['successful']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_surrogate_check(check: dict[str, Any], path: Path) -> None:
    """The surrogate's mean for each real training of a real ablation against its measured val_bpb; colour by
    where the training came from (a search's experiment, the noise floor, a confirmation)."""
    pairs = check["pairs"]
    predicted, real = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    kinds = ["noise" if p[0].startswith("noise") else "confirm" if "/confirm/" in p[0] else "search" for p in pairs]
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = float(min(predicted.min(), real.min())), float(max(predicted.max(), real.max()))
    sd = check["served_noise_sd_bpb"]
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
    band = [lo - 2 * sd, hi - 2 * sd], [lo + 2 * sd, hi + 2 * sd]
    ax.fill_between([lo, hi], *band, color="#dddddd", label="±2 noise sd")
    for kind, colour_ in (("search", "#264653"), ("noise", "#8d99ae"), ("confirm", "#e76f51")):
        mask = np.array([k == kind for k in kinds])
        if mask.any():
            ax.scatter(real[mask], predicted[mask], s=14, color=colour_, label=f"{kind} ({int(mask.sum())})")
    ax.set_xlabel("real val_bpb (trained)")
    ax.set_ylabel("surrogate mean")
    ax.set_title(f"Surrogate vs real trainings: Spearman {check['spearman']:.2f}, n={len(pairs)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
