"""Validate a mechanism before injection: static policy, sandbox load, contract test, counterfactual replay.

The contract test runs the mechanism on synthetic traces built from the real space (empty; a baseline; keep, discard
and crash records); the replay runs it on prefixes of the recorded trace ("what would it have proposed?"). Both use
``ScriptedLLM``, a deterministic stand-in that answers every ``ask_llm`` with a valid proposal. Every batch runs twice
in separate children, the second time in reverse order, so outputs that depend on the seed only are identical and
hidden state carried between calls shows up as a difference.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mechanisms.base import MechanismError, MechanismSpec, MechanismView, check_output, view_payload, view_seed
from mechanisms.policy import check_source
from mechanisms.sandbox import SandboxedMechanism, SandboxError, SandboxLimits
from mechanisms.space import SearchSpace

STAGES = ("policy", "load", "contract", "replay", "done")
# All stages of one candidate together (the per-view and start-up limits apply inside it): a mechanism that sleeps
# just under the per-view limit in each of its ~30 views is stopped here, not after minutes.
TIME_LIMIT_S = 60.0


@dataclass
class ValidationReport:
    ok: bool
    stage: str  # the last stage reached: one of STAGES ("done" when ok)
    errors: list[str] = field(default_factory=list)
    name: str | None = None
    target: str | None = None
    sha256: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, and max_view_s
    replay: dict[str, int] = field(default_factory=dict)  # n, distinct, changed_vs_llm (views whose changes differ)
    llm_calls: int = 0
    time_limit_s: float | None = None  # the total time limit of this validation, all stages together

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScriptedLLM:
    """A deterministic ``ask_llm`` for validation: a seeded neighbour of each view's incumbent.

    It honours ``constraints["only"]`` and the frozen names, never returns a no-op, and answers the n-th call for a
    view the same way on every run. ``baseline(payload)`` is its first answer without guidance: what the plain LLM
    proposer would have done.
    """

    def __init__(self, space: SearchSpace, payloads: Sequence[Mapping[str, Any]], seed: int) -> None:
        self.space, self.payloads, self.seed = space, payloads, seed
        self.calls = [0] * len(payloads)

    def __call__(self, index: int, guidance: str, constraints: Mapping[str, Any] | None) -> dict[str, Any]:
        call = self.calls[index]
        self.calls[index] += 1
        return self.answer(self.payloads[index], call, (constraints or {}).get("only"))

    def answer(self, payload: Mapping[str, Any], call: int, only: Sequence[str] | None = None) -> dict[str, Any]:
        frozen = payload.get("settings", {}).get("frozen", ())
        free = [n for n in self.space.free_names(frozen) if only is None or n in only] or list(
            self.space.free_names(frozen)
        )
        key = f"{self.seed}:{payload.get('iteration')}:{len(payload.get('trace', ()))}:{call}:{sorted(only or [])}"
        rng = random.Random(key)
        names = rng.sample(free, min(len(free), rng.choice((1, 2))))
        incumbent = {**self.space.defaults(), **payload.get("incumbent", {})}
        changes = self.space.neighbour(incumbent, rng, names, 0.15)
        return {"changes": changes, "hypothesis": f"scripted answer {call}", "expected_direction": "lower val_bpb"}

    def baseline(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return self.answer(payload, 0)


def _record(i: int, params: dict[str, Any], changes: dict[str, Any], bpb: float | None, status: str) -> dict[str, Any]:
    return {
        "id": f"e{i:04d}", "iteration": i, "params": params, "changes": changes, "hypothesis": "synthetic",
        "val_bpb": bpb, "status": status, "mechanism": "synthetic", "seconds": 1.0, "description": "synthetic",
    }  # fmt: skip


def synthetic_trace(space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    """A baseline keep, an improving keep, a discard and a crash, with names and values from ``space``."""
    rng = random.Random(seed)
    base = space.defaults()
    free = list(space.free_names())
    records = [_record(0, base, {}, 1.50, "keep")]
    better = space.neighbour(base, rng, free[:1], 0.15)
    improved = space.apply(base, better)
    records.append(_record(1, improved, better, 1.45, "keep"))
    for i, (bpb, status) in enumerate(((1.48, "discard"), (None, "crash")), start=2):
        changes = space.neighbour(improved, rng, rng.sample(free, min(2, len(free))), 0.15)
        records.append(_record(i, space.apply(improved, changes), changes, bpb, status))
    return records


def _payload(space: SearchSpace, trace: Sequence[Mapping[str, Any]], seed: int, settings: Mapping[str, Any],
             result: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    keeps = [r for r in trace if r.get("status") == "keep" and r.get("val_bpb") is not None]
    best = min(keeps, key=lambda r: r["val_bpb"]) if keeps else None
    return view_payload(
        trace=list(trace),
        space=space,
        incumbent=dict(best["params"]) if best else space.defaults(),
        best_bpb=best["val_bpb"] if best else None,
        iteration=len(trace),
        seed=view_seed(seed, len(trace)),
        settings=settings,
        result=result,
    )


def contract_payloads(space: SearchSpace, target: str, seed: int, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    trace = synthetic_trace(space, seed)
    if target == "propose":
        return [_payload(space, trace[:k], seed, settings) for k in (0, 1, len(trace))]
    best = trace[1]
    results = [
        {**best, "id": "e9000", "val_bpb": best["val_bpb"] - 0.01, "status": "discard"},
        {**best, "id": "e9001", "val_bpb": best["val_bpb"] + 0.01, "status": "discard"},
        {**best, "id": "e9002", "val_bpb": None, "status": "crash"},
    ]
    return [_payload(space, [], seed, settings, trace[0])] + [
        _payload(space, trace, seed, settings, r) for r in results
    ]


def replay_payloads(
    space: SearchSpace, trace: Sequence[Mapping[str, Any]], target: str, seed: int, settings: Mapping[str, Any],
    max_views: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """One view per (evenly spaced) prefix of the recorded trace; for decide, the next record is the result."""
    ends = range(len(trace) + 1) if target == "propose" else range(len(trace))
    picked = (
        sorted({ends[round(i * (len(ends) - 1) / max(1, max_views - 1))] for i in range(max_views)}) if ends else []
    )
    if target == "propose":
        return [_payload(space, trace[:k], seed, settings) for k in picked]
    return [_payload(space, trace[:k], seed, settings, trace[k]) for k in picked]


class _Validator:
    def __init__(
        self, spec: MechanismSpec, space: SearchSpace, seed: int, limits: SandboxLimits, deadline: float
    ) -> None:
        self.spec, self.space, self.seed, self.limits, self.deadline = spec, space, seed, limits, deadline
        self.mech = SandboxedMechanism(spec, limits)
        self.llm_calls = 0
        self.max_view_s = 0.0

    def run_twice(self, payloads: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        """Outputs in order and the errors: invalid outputs, slow views, order- or run-dependent outputs."""
        forward = self.mech.run_many(payloads, ScriptedLLM(self.space, payloads, self.seed), deadline=self.deadline)
        stats = self.mech.last_stats
        reversed_payloads = payloads[::-1]
        backward = self.mech.run_many(
            reversed_payloads, ScriptedLLM(self.space, reversed_payloads, self.seed), deadline=self.deadline
        )[::-1]
        errors = []
        if stats is not None:
            self.llm_calls += sum(stats.llm_calls)
            self.max_view_s = max([self.max_view_s, *stats.view_seconds])
            slow = [i for i, s in enumerate(stats.view_seconds) if s > self.limits.wall_s]
            errors += [f"view {i}: took {stats.view_seconds[i]:.2f} s (limit {self.limits.wall_s} s)" for i in slow]
        for i, (a, b) in enumerate(zip(forward, backward, strict=True)):
            if a != b:
                errors.append(f"view {i}: not deterministic for a seed (two runs gave {a!r} and {b!r})")
                break
        for i, (payload, output) in enumerate(zip(payloads, forward, strict=True)):
            view = MechanismView.from_payload(payload, lambda guidance, constraints: {})
            errors += [f"view {i}: {e}" for e in check_output(output, self.spec.target, view)]
        return forward, errors


def validate_mechanism(
    source: str,
    space: SearchSpace,
    trace: Sequence[Mapping[str, Any]],
    *,
    seed: int = 0,
    limits: SandboxLimits | None = None,
    settings: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    max_replay: int = 12,
    time_limit_s: float = TIME_LIMIT_S,
) -> ValidationReport:
    """Run the four stages; the report says how far the mechanism got and why it stopped.

    It never raises (but KeyboardInterrupt): whatever goes wrong on the way — in the candidate, the sandbox or this
    code — is a refusal with the reason in the report. ``time_limit_s`` bounds all stages together."""
    report = ValidationReport(ok=False, stage="policy", time_limit_s=time_limit_s)
    try:
        return _validate(report, source, space, trace, seed, limits, settings, params, max_replay, time_limit_s)
    except Exception as exc:  # noqa: BLE001 - a candidate must never crash the run that validates it
        report.ok = False
        report.errors = [f"{report.stage}: the validation failed: {type(exc).__name__}: {exc}"[:2000]]
        return report


def _validate(
    report: ValidationReport,
    source: str,
    space: SearchSpace,
    trace: Sequence[Mapping[str, Any]],
    seed: int,
    limits: SandboxLimits | None,
    settings: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    max_replay: int,
    time_limit_s: float,
) -> ValidationReport:
    deadline = time.monotonic() + time_limit_s
    settings = dict(settings or {})
    clock = time.perf_counter()
    policy = check_source(source)
    report.timings["policy"] = time.perf_counter() - clock
    if not policy.ok:
        report.errors = policy.messages()
        return report
    report.stage = "load"
    try:
        spec = MechanismSpec.from_source(source, "generated", params)
        validator = _Validator(spec, space, seed, limits or SandboxLimits(), deadline)
    except (MechanismError, SandboxError) as exc:
        report.errors = [str(exc)]
        return report
    report.name, report.target, report.sha256 = spec.name, spec.target, spec.sha256
    outputs: list[dict[str, Any]] = []
    stages = (
        ("contract", contract_payloads(space, spec.target, seed, settings)),
        ("replay", replay_payloads(space, trace, spec.target, seed, settings, max_replay)),
    )
    for stage, payloads in stages:
        report.stage = stage
        clock = time.perf_counter()
        try:
            produced, errors = validator.run_twice(payloads) if payloads else ([], [])
        except SandboxError as exc:
            report.errors = [f"{stage}: {exc}"]
            return report
        finally:
            report.timings[stage] = time.perf_counter() - clock
            report.timings["max_view_s"] = validator.max_view_s
            report.llm_calls = validator.llm_calls
        if errors:
            report.errors = [f"{stage}: {e}" for e in errors]
            return report
        outputs += produced
        if stage == "replay":
            report.replay = _replay_summary(space, payloads, produced, spec.target, seed)
    if len({json.dumps(o, sort_keys=True) for o in outputs}) <= 1:
        report.errors = ["the mechanism returns the same output for every view (a constant, not a search)"]
        return report
    report.ok, report.stage = True, "done"
    return report


def _replay_summary(space: SearchSpace, payloads: list[dict[str, Any]], outputs: list[dict[str, Any]], target: str,
                    seed: int) -> dict[str, int]:  # fmt: skip
    """How many replayed views, how many distinct outputs, how many differ from the plain LLM / greedy rule."""
    llm = ScriptedLLM(space, payloads, seed)
    changed = 0
    for payload, output in zip(payloads, outputs, strict=True):
        if target == "propose":  # what it changes, not how it words the hypothesis
            changed += output.get("changes") != llm.baseline(payload)["changes"]
        else:
            result, best = payload["result"], payload["best_bpb"]
            greedy = (
                result.get("val_bpb") is not None
                and result.get("status") != "crash"
                and (best is None or result["val_bpb"] < best)
            )
            changed += output.get("keep") != greedy
    distinct = len({json.dumps(o, sort_keys=True) for o in outputs})
    return {"n": len(outputs), "distinct": distinct, "changed_vs_llm": changed}
