"""Graph state: JSON-like values only, so that every field survives a checkpoint and a kill -9."""

from __future__ import annotations

from typing import Any, TypedDict


class Settings(TypedDict, total=False):
    """What Level 1.5 may change: how the inner loop searches, never the values it tries."""

    strategy: str  # "explore" | "exploit" | "focused"
    frozen: list[str]  # parameter names the proposer may not touch
    guidance: str  # free text shown to the proposer


class MechanismRecord(TypedDict, total=False):
    """Names the mechanism that runs as a node, so a resumed run rebuilds the same graph from state alone."""

    id: str  # "<name>@<sha256[:8]>"
    name: str
    target: str  # "propose" | "decide"
    origin: str  # "builtin" | "composed" | "generated"
    sha256: str  # of the source that runs
    params: dict[str, Any]  # parameters of a composed built-in
    path: str  # where the source is kept in the run folder (generated mechanisms)


class InnerState(TypedDict, total=False):
    iteration: int  # index of the next experiment (0 is the baseline)
    stop_at: int  # the segment ends when `iteration` reaches this
    experiments: list[dict[str, Any]]  # every experiment record, oldest first, across segments
    incumbent: dict[str, Any]  # hyperparameters of the best configuration so far
    incumbent_id: str | None  # experiment whose train.py is the best so far (code mode edits start from it)
    best_bpb: float | None  # the lowest val_bpb of a kept experiment (not one discarded within the noise margin)
    best_id: str | None  # the experiment that reached it (equal to incumbent_id unless a decide mechanism
    #                      accepted a worse result, as simulated annealing does)
    batch: list[dict[str, Any]]  # the proposals being trained (one, or k when trials run in parallel), by id
    outcomes: list[dict[str, Any]]  # what the trainer returned for each proposal of `batch`, in the same order
    settings: Settings
    mechanisms: dict[str, MechanismRecord]  # by target node
    stop_reason: str | None


class SegmentRecord(TypedDict, total=False):
    """One segment of the inner loop: which mechanism ran and what the search achieved during it."""

    index: int
    mechanism: str  # id of the propose mechanism active during the segment
    first: int  # iteration of its first experiment
    last: int  # iteration after its last experiment
    best_before: float | None
    best_after: float | None
    progress: float  # best_before - best_after (>= 0); how far the segment moved the best
    kept: int  # experiments kept during the segment
    crashes: int


class OuterState(TypedDict, total=False):
    level: str  # "1" | "1.5" | "2" | "1+2": which outer steps act (every step runs; inactive ones only pass)
    cycle: int  # segments run so far
    total: int  # experiments of the whole run (the baseline included)
    inner: InnerState  # the inner loop's state, carried whole from one segment to the next
    active: MechanismRecord  # the propose mechanism of the next segment
    previous: MechanismRecord | None  # what `compare` rolls back to
    on_trial: bool  # the active mechanism was injected before the last segment and awaits `compare`
    candidate: MechanismRecord | None  # generated or composed, not yet validated
    candidate_source: str | None
    diagnosis: dict[str, Any] | None
    validation: dict[str, Any] | None
    repairs: int  # repair rounds spent on the current candidate
    segments: list[SegmentRecord]
    history: list[dict[str, Any]]  # every outer decision: injections, refusals, keeps, roll-backs
    stop_reason: str | None
