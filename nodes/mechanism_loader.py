"""From a mechanism record in state to the callable that runs it.

Built-in and composed mechanisms are the project's own code and run in this process; a generated mechanism's source
never does: it runs in the sandboxed child, its LLM requests proxied back. Both receive the same JSON payload, so a
mechanism sees the same view wherever it runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mechanisms.base import (
    ALL_BUILTIN_NAMES,
    MechanismError,
    MechanismSpec,
    MechanismView,
    builtin_catalog,
    builtin_info,
    builtin_sha256s,
    builtin_source,
    load_builtin,
    resolve_params,
)
from mechanisms.sandbox import SandboxedMechanism
from nodes.mechanism_calls import Mechanism, mechanism_record
from nodes.state import MechanismRecord


def builtin_record(name: str, params: dict[str, Any] | None = None) -> MechanismRecord:
    """The record of a built-in (no parameters) or a composed one (parameters validated, defaults filled)."""
    resolved = resolve_params(name, params) if params else {}
    return mechanism_record(
        name, "composed" if params else "builtin", builtin_source(name), resolved, target=load_target(name)
    )


def load_target(name: str) -> str:
    return builtin_info(name).target


def builtin_mechanism(name: str, params: dict[str, Any] | None = None) -> Mechanism:
    return load_mechanism(builtin_record(name, params), Path("."))


def load_mechanism(record: MechanismRecord, run_dir: Path) -> Mechanism:
    """The callable for `record`; refuses a record whose source no longer has the recorded hash."""
    if record["origin"] in ("builtin", "composed"):
        if record["name"] not in ALL_BUILTIN_NAMES:
            raise MechanismError(f"unknown built-in mechanism {record['name']!r}")
        if record["sha256"] not in builtin_sha256s(record["name"]):
            raise MechanismError(f"the built-in {record['name']} changed since this run recorded it")
        entry = load_builtin(record["name"], **record.get("params", {}))
        return Mechanism(record, lambda payload, ask: entry(MechanismView.from_payload(payload, ask)))
    spec = MechanismSpec.from_dict({**record, "source": mechanism_source(record, run_dir)})
    return Mechanism(record, SandboxedMechanism(spec))


def mechanism_source(record: MechanismRecord, run_dir: Path) -> str:
    if record["origin"] in ("builtin", "composed"):
        return builtin_source(record["name"])
    path = Path(run_dir) / record["path"]
    source = path.read_text()
    if hashlib.sha256(source.encode()).hexdigest() != record["sha256"]:
        raise MechanismError(f"{path} does not have the recorded sha256: refusing to run it")
    return source


def compose_families() -> dict[str, dict[str, Any]]:
    """name -> target, doc, params {name: {default, doc}}: what compose mode offers the LLM."""
    catalogue = {}
    for entry in builtin_catalog():
        params = {p["name"]: {"default": p.get("default"), "doc": _param_doc(p)} for p in entry["params"]}
        catalogue[entry["name"]] = {"target": entry["target"], "doc": entry["summary"], "params": params}
    return catalogue


def _param_doc(p: dict[str, Any]) -> str:
    if p.get("kind") == "choice":
        return f"one of {p.get('choices')}"
    if p.get("kind") in ("int", "float"):
        return f"{p['kind']} in [{p.get('low')}, {p.get('high')}]"
    return str(p.get("kind"))


def coerce_builtin_params(name: str, settings: dict[str, str]) -> dict[str, Any]:
    """Validated parameters of a composed built-in; raises ValueError naming what is wrong."""
    try:
        return resolve_params(name, settings)
    except MechanismError as e:
        raise ValueError(str(e)) from None
