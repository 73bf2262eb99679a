"""The locked evaluator: validation bits per byte. train.py calls it and never changes it.

val_bpb = sum of per-token cross-entropy (nats) over the first `eval_tokens` targets of the val stream, divided by
ln(2) times the sum of those targets' byte lengths. Targets of byte length 0 (BOS) count in neither sum, so the figure
does not depend on the tokenizer. The targets scored are fixed; the model sees them through non-overlapping windows
of `seq_len` tokens, in order, with no randomness.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt.prepare import Data

DEFAULT_EVAL_TOKENS = 65_536
IGNORE = -1  # target id of padding rows/columns; they carry no bytes
CE_ROWS = 1024  # positions per cross-entropy call


def evaluator_sha256() -> str:
    """The hash the parent compares: any change to this file changes it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def eval_targets(data: Data, eval_tokens: int) -> tuple[np.ndarray, int]:
    """The val stream prefix scored (inputs + targets) and the number of targets actually available."""
    n = min(eval_tokens, data.val.size - 1)
    if n < 1:
        raise ValueError("val split holds fewer than 2 tokens")
    return data.val[: n + 1].astype(np.int64), n


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    data: Data,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    seq_len: int = 256,
    batch_size: int = 16,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Bits per byte of `model` (idx (B, T) -> logits (B, T, V)) on the first `eval_tokens` val targets.

    Every forward has shape (batch_size, seq_len): the tail is padded with IGNORE targets so a compiled model sees
    one shape only.
    """
    stream, n = eval_targets(data, eval_tokens)
    windows = math.ceil(n / seq_len)
    rows = math.ceil(windows / batch_size) * batch_size
    xs = np.full((rows * seq_len,), data.bos_id, dtype=np.int64)
    ys = np.full((rows * seq_len,), IGNORE, dtype=np.int64)
    xs[:n], ys[:n] = stream[:n], stream[1 : n + 1]
    x, y = torch.from_numpy(xs).view(rows, seq_len), torch.from_numpy(ys).view(rows, seq_len)
    nbytes = torch.from_numpy(data.token_bytes.astype(np.int64))
    counted = (y != IGNORE) & (nbytes[y.clamp(min=0)] > 0)
    total_bytes = int(nbytes[y.clamp(min=0)][counted].sum())
    y = torch.where(counted, y, IGNORE)

    was_training = model.training
    model.eval()
    amp = torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    total_nats = 0.0
    for i in range(0, rows, batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with amp:
            logits = model(xb)
        logits, targets = logits.float().flatten(0, 1), yb.flatten()
        # a chunk of CE_ROWS rows of log-probabilities stays in the CPU's cache: the same figures, ~3x faster
        chunks = zip(logits.split(CE_ROWS), targets.split(CE_ROWS), strict=True)
        nats = torch.cat([F.cross_entropy(lg, t, ignore_index=IGNORE, reduction="none") for lg, t in chunks])
        total_nats += float(nats.double().sum())  # float64 sum: the figure must not drift with eval_tokens
    model.train(was_training)
    return total_nats / (math.log(2) * total_bytes)


def baseline_bpb(data: Data, eval_tokens: int = DEFAULT_EVAL_TOKENS) -> dict[str, float]:
    """Two reference points on the same targets: uniform over the vocabulary, and train-split unigram frequencies
    (add-one smoothed). A model that learned anything beats both."""
    stream, n = eval_targets(data, eval_tokens)
    y = stream[1 : n + 1]
    nbytes = data.token_bytes[y]
    y, nbytes = y[nbytes > 0], nbytes[nbytes > 0]
    bits_per_byte = 1 / (math.log(2) * float(nbytes.sum()))
    counts = np.bincount(data.train.astype(np.int64), minlength=data.vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return {
        "uniform": y.size * math.log(data.vocab_size) * bits_per_byte,
        "unigram": float(-logp[y].sum()) * bits_per_byte,
    }
