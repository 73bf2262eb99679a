"""Design of experiments around the incumbent: the next untested row of an L4, L8 or L9 orthogonal array."""

from typing import Any

NAME = "doe"
TARGET = "propose"
PARAMS: dict[str, dict[str, Any]] = {
    "design": {"kind": "choice", "choices": ["L4", "L8", "L9"], "default": "L9"},
    "factors": {"kind": "int", "low": 1, "high": 3, "default": 3},
    "step": {"kind": "float", "low": 0.02, "high": 0.5, "default": 0.2},
}
# Level indices of the first three columns of each array; L9 has 3 levels (index 1 is the incumbent's value).
ARRAYS = {
    "L4": ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)),
    "L8": ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)),
    "L9": ((0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 1), (1, 1, 2), (1, 2, 0), (2, 0, 2), (2, 1, 0), (2, 2, 1)),
}
SAME = 1e-9


def _param(view: Any, key: str) -> Any:
    return view.params.get(key, PARAMS[key]["default"])


def factors(view: Any) -> list[str]:
    """The free names least changed up to the record that made the incumbent (stable while it holds)."""
    keeps = [i for i, record in enumerate(view.trace) if record.get("status") == "keep"]
    history = view.trace[: keeps[-1] + 1] if keeps else ()
    counts = {name: 0 for name in view.free_names}
    for record in history:
        for name in record.get("changes", {}):
            if name in counts:
                counts[name] += 1
    return sorted(counts, key=lambda name: counts[name])[: _param(view, "factors")]


def design_rows(view: Any, names: list[str]) -> list[dict[str, Any]]:
    """The array's rows as changes to the incumbent, without empty or repeated rows."""
    array = ARRAYS[_param(view, "design")]
    k = 3 if _param(view, "design") == "L9" else 2
    levels = {name: view.space.levels(name, k, view.incumbent[name], _param(view, "step")) for name in names}
    rows: list[dict[str, Any]] = []
    for row in array:
        changes = {}
        for name, level in zip(names, row, strict=False):
            values = levels[name]
            value = values[level % len(values)]
            if value != view.incumbent[name]:
                changes[name] = value
        if changes and changes not in rows:
            rows.append(changes)
    return rows


def tested(view: Any, changes: dict[str, Any]) -> bool:
    config = view.space.apply(view.incumbent, changes)
    return any(view.space.distance(config, record["params"]) <= SAME for record in view.trace if record.get("params"))


def propose(view: Any) -> dict[str, Any]:
    names = factors(view)
    rows = design_rows(view, names)
    for index, changes in enumerate(rows):
        if not tested(view, changes) and not view.check_changes(changes):
            return {
                "changes": changes,
                "hypothesis": f"{_param(view, 'design')} design over {', '.join(names)}, row {index + 1}/{len(rows)}",
                "expected_direction": "unknown: a design point to estimate main effects",
            }
    results = []
    for record in view.trace:
        if record.get("changes") in rows:
            results.append(f"{dict(record['changes'])} -> {record.get('val_bpb')}")
    guidance = (
        f"{view.settings.get('guidance', '')}\nA {_param(view, 'design')} design around the incumbent is complete: "
        f"{'; '.join(results) or 'no results'}. Propose the change its main effects suggest."
    )
    return view.ask_llm(guidance.strip())
