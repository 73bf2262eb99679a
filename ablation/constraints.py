"""The one constraint of gpt/train.py's search space that its declaration does not carry: the total batch is a whole
number of micro-batches (train.py raises ConfigError, exit 2, otherwise). The sampling design repairs its points to
satisfy it, and the surrogate crashes exactly where it is violated, as the real trainer does. A space without these
parameters has no such constraint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mechanisms.space import SearchSpace

TOTAL, MICRO_BATCH, SEQ = "TOTAL_BATCH_TOKENS", "DEVICE_BATCH_SIZE", "SEQ_LEN"


def config_error(params: Mapping[str, Any]) -> str | None:
    """Why gpt/train.py refuses ``params`` before training (exit 2), or None."""
    if not all(name in params for name in (TOTAL, MICRO_BATCH, SEQ)):
        return None
    micro = params[MICRO_BATCH] * params[SEQ]
    if params[TOTAL] % micro:
        return f"{TOTAL}={params[TOTAL]} is not a multiple of {MICRO_BATCH}*{SEQ}={micro}"
    return None


def repair(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the total batch moved to the nearest (in log scale) multiple of the micro-batch that lies in
    its bounds; unchanged when there is none or nothing to repair."""
    if config_error(params) is None:
        return params
    p = space[TOTAL]
    micro = params[MICRO_BATCH] * params[SEQ]
    low, high = math.ceil(p.low / micro), math.floor(p.high / micro)  # type: ignore[operator]
    if low > high:
        return params
    ratio = params[TOTAL] / micro
    q = min(
        (max(low, min(high, c)) for c in (math.floor(ratio), math.ceil(ratio))), key=lambda c: abs(math.log(c / ratio))
    )
    return {**params, TOTAL: q * micro}
