"""What a page watches: a cheap signature of a served folder (sizes and modification times of the files a run or
an ablation writes) that changes whenever a writer adds to it. The event stream compares it once a second."""

from __future__ import annotations

from typing import Any

from dashboard.ablation_folder import signature as ablation_signature
from dashboard.folders import Refused, Served, kind_of
from dashboard.run_folder import WATCHED


def signature(served: Served, key: str) -> tuple[Any, ...]:
    try:
        folder = served.folder(key)
    except (Refused, FileNotFoundError):
        return ("gone",)
    kind = kind_of(folder)
    if kind == "run":
        return folder.signature(*WATCHED)
    if kind == "ablation":
        return ablation_signature(folder)
    found = served.discover_under(folder)
    return tuple((k, f.key, signature(served, f.key) if k == "run" else ablation_signature(f)) for k, f in found)
