"""The rule between parameters of gpt/train.py's search space: the total batch is a whole number of micro-batches
(train.py raises ConfigError, exit 2, otherwise). train.py declares it (`multiple_of` on TOTAL_BATCH_TOKENS), so every
proposer meets it as a refused proposal; the sampling design repairs its points with `SearchSpace.repair`, and the
surrogate crashes exactly where it is violated, as the real trainer does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mechanisms.space import SearchSpace
from trials.launcher import TRAIN_PATH

SPACE = SearchSpace.from_train_source(TRAIN_PATH.read_text())


def config_error(params: Mapping[str, Any]) -> str | None:
    """Why gpt/train.py refuses ``params`` before training (exit 2), or None."""
    errors = SPACE.constraint_errors(params)
    return "; ".join(errors) if errors else None
