"""The noise floor a run is judged against: the baseline configuration of its ablation re-trained with other seeds
(`<ablation>/noise/nNN/outcome.json`), read when the ablation's folder is served too."""

from __future__ import annotations

import math
import statistics
from typing import Any

from dashboard.folders import Folder, Refused, Served, Unreadable
from dashboard.trace import mapping


def ablation_noise(served: Served, folder: Folder) -> dict[str, Any] | None:
    """The noise floor of the ablation this run belongs to (`<ablation>/runs/<run>`), when that is served too."""
    parts = folder.key.split("/")
    if len(parts) < 3 or parts[-2] != "runs":
        return None
    try:
        ablation = served.folder("/".join(parts[:-2]))
    except (Refused, FileNotFoundError):
        return None
    return noise_floor(ablation) if ablation.is_file("ablation.json") else None


def noise_floor(ablation: Folder) -> dict[str, Any] | None:
    """The baseline configuration re-trained with other seeds (`noise/nNN/outcome.json`): mean, sd, n."""
    values: list[float] = []
    crashes = 0
    for name in ablation.names("noise"):
        try:
            outcome = ablation.read_json("noise", name, "outcome.json")
        except (FileNotFoundError, Unreadable, Refused, OSError):
            continue
        value = mapping(mapping(outcome).get("result")).get("val_bpb")
        if isinstance(outcome, dict) and outcome.get("ok") and isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
        else:
            crashes += 1
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "crashes": crashes, "mean": statistics.fmean(values), "sd": sd, "values": values}
