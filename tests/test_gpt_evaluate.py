"""gpt.evaluate: the locked evaluator on hand-computable cases, baselines, hashes and result verification."""

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt import evaluate
from gpt.prepare import Data


class Uniform(torch.nn.Module):
    """Zero logits: every token has probability 1/V, so each scored target costs exactly ln V nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab)


def toy_data(vocab: int = 8) -> Data:
    # token 0 is BOS (0 bytes); others stand for 1..3 bytes
    token_bytes = np.array([0] + [1 + i % 3 for i in range(vocab - 1)], dtype=np.int32)
    rng = np.random.default_rng(0)
    val = rng.integers(0, vocab, size=1000).astype(np.uint16)
    val[::50] = 0
    train = rng.integers(1, vocab, size=5000).astype(np.uint16)
    return Data(train, val, token_bytes, None, 0, "split", {})  # type: ignore[arg-type]  # no tokenizer needed


def test_uniform_model_scores_log2_vocab_per_token_over_bytes() -> None:
    data = toy_data()
    n = 300
    targets = data.val[1 : n + 1]
    counted = targets[data.token_bytes[targets] > 0]
    expected = math.log2(8) * counted.size / data.token_bytes[counted].sum()
    for seq_len, batch in ((16, 4), (64, 3), (300, 1)):  # window and batch shapes do not change the targets scored
        got = evaluate.evaluate_bpb(Uniform(8), data, eval_tokens=n, seq_len=seq_len, batch_size=batch)
        assert got == pytest.approx(expected, rel=1e-7)  # ln V in float32
    assert evaluate.baseline_bpb(data, n)["uniform"] == pytest.approx(expected, rel=1e-12)


def test_unigram_baseline_beats_uniform_on_skewed_data() -> None:
    data = toy_data()
    skewed = np.array([1] * 900 + list(range(1, 8)) * 10, dtype=np.uint16)
    data = Data(skewed, skewed, data.token_bytes, None, 0, "s", {})  # type: ignore[arg-type]
    base = evaluate.baseline_bpb(data, 500)
    assert base["unigram"] < base["uniform"]


def test_eval_tokens_larger_than_val_uses_all_of_it() -> None:
    data = toy_data()
    _, n = evaluate.eval_targets(data, 10**9)
    assert n == data.val.size - 1


def test_evaluator_hash_is_the_file_hash() -> None:
    path = Path(evaluate.__file__)
    assert evaluate.evaluator_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_evaluator_file_changes_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "evaluate.py"
    copy.write_bytes(Path(evaluate.__file__).read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(evaluate, "__file__", str(copy))
    tampered = evaluate.evaluator_sha256()
    monkeypatch.undo()
    assert tampered != evaluate.evaluator_sha256()


class RandomLogits(torch.nn.Module):
    """Logits that differ at every position, drawn from the input ids: the cross-entropy of each target matters."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)) * 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_cross_entropy_in_chunks_gives_the_same_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """CE_ROWS only splits the work: chunks of 7 positions (the last one short) score exactly what one chunk does."""
    data, model = toy_data(), RandomLogits(8)
    whole = evaluate.evaluate_bpb(model, data, eval_tokens=300, seq_len=64, batch_size=3)
    monkeypatch.setattr(evaluate, "CE_ROWS", 7)
    chunked = evaluate.evaluate_bpb(model, data, eval_tokens=300, seq_len=64, batch_size=3)
    assert chunked == whole
    assert whole != evaluate.evaluate_bpb(Uniform(8), data, eval_tokens=300, seq_len=64, batch_size=3)
