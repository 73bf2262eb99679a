"""One grammar for train.py's constants block (gpt/constants.py): the training process, the search space and the
candidate builder read the same lines as the same values, a rewrite reads back as what was written, and a block in
autoresearch's own notation (`TOTAL_BATCH_TOKENS = 2**19`) trains."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpt import constants, runtime
from mechanisms.space import SearchSpace, SpaceError
from tests.test_gpt_train import TRAIN, tiny_corpus_env
from trials.candidate import EditError, apply_edits, rewrite_constants

BLOCK = f"""
import math
{constants.BLOCK_START}
PLAIN = 8192  # int [1024, 1048576] log; a plain int
UNDERSCORED = 8_192  # int [1_024, 2**20]
POWER = 2**13  # int [2**10, 2**20] log multiple_of PLAIN
SHIFTED = 1 << 13  # int [1 << 10, 1 << 20]
NEGATIVE = -3  # int [-10, 10]
LR = 3e-4  # float [1e-05, 0.1] log; exponent form
NEG_FLOAT = -0.5  # float [-1.0, 1.0]
SCALED = 0.04 * 2  # float [0.0, 1.0]
WHOLE = 1  # float [0, 2]; an int where a float is declared
NAME = "muon"  # choice ["muon", "adamw", "a;b"]; a string
SIZE = 256  # choice [64, 128, 2**8]
FLAG = True  # bool; a bool
    # an indented comment line and a blank one are skipped

INDENTED = 2  # int [0, 4] frozen
{constants.BLOCK_END}
"""
EXPECTED = {
    "PLAIN": 8192, "UNDERSCORED": 8192, "POWER": 8192, "SHIFTED": 8192, "NEGATIVE": -3, "LR": 3e-4,
    "NEG_FLOAT": -0.5, "SCALED": 0.08, "WHOLE": 1, "NAME": "muon", "SIZE": 256, "FLAG": True, "INDENTED": 2,
}  # fmt: skip


def python_values(source: str) -> dict[str, Any]:
    """What Python itself binds when it runs the block (train.py reads its constants as module globals)."""
    start, end = constants.block_lines(source)
    namespace: dict[str, Any] = {}
    lines = source.splitlines()[start : end - 1]
    exec("\n".join(lines), namespace)  # noqa: S102 - the test's own literal block
    return {k: v for k, v in namespace.items() if k.isupper()}


def runtime_values(source: str, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "train.py"
    script.write_text(source)
    return runtime.hyperparameters(str(script))


def assert_same(found: dict[str, Any], expected: dict[str, Any]) -> None:
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        assert constants.same(found[name], value), (name, found[name], value)


def test_every_consumer_reads_the_same_values(tmp_path: Path) -> None:
    assert_same(python_values(BLOCK), EXPECTED)
    assert_same(constants.values(BLOCK), EXPECTED)
    assert_same(runtime_values(BLOCK, tmp_path), EXPECTED)
    assert_same(SearchSpace.from_train_source(BLOCK).defaults(), EXPECTED)
    space = SearchSpace.from_train_source(BLOCK)
    assert space["POWER"].low == 1024 and space["SHIFTED"].high == 2**20 and space["SIZE"].choices == (64, 128, 256)
    assert space["NAME"].doc == "a string" and space["INDENTED"].frozen and space["POWER"].multiple_of == ("PLAIN",)


def test_the_real_train_py_reads_the_same_everywhere(tmp_path: Path) -> None:
    source = TRAIN.read_text()
    values = constants.values(source)
    assert_same(python_values(source), values)
    assert_same(runtime_values(source, tmp_path), values)
    assert_same(SearchSpace.from_train_source(source).defaults(), values)


def test_a_rewrite_round_trips_through_every_consumer(tmp_path: Path) -> None:
    new = {"PLAIN": 2**12, "POWER": 2**14, "LR": 1.5e-05, "NEG_FLOAT": -1.0, "NAME": "a;b", "FLAG": False, "SIZE": 64}
    rewritten = rewrite_constants(BLOCK, new)
    assert rewritten == constants.rewrite(BLOCK, new)
    expected = {**EXPECTED, **new}
    for read in (python_values, constants.values, lambda s: runtime_values(s, tmp_path)):
        assert_same(read(rewritten), expected)
    assert_same(SearchSpace.from_train_source(rewritten).defaults(), expected)
    # only the changed values' text moved: declarations, comments and unchanged expressions are kept
    assert "SHIFTED = 1 << 13  # int [1 << 10, 1 << 20]" in rewritten and "UNDERSCORED = 8_192  #" in rewritten
    assert 'NAME = \'a;b\'  # choice ["muon", "adamw", "a;b"]; a string' in rewritten
    assert constants.rewrite(BLOCK, EXPECTED) == BLOCK  # the same values: not a byte changes
    assert_same(constants.values(constants.rewrite(rewritten, EXPECTED)), EXPECTED)
    with pytest.raises(constants.BlockError, match="not constants"):
        constants.rewrite(BLOCK, {"MISSING": 1})
    with pytest.raises(constants.BlockError, match="cannot be written"):
        constants.rewrite(BLOCK, {"LR": float("nan")})


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("A = foo()  # int [0, 2]", "not a literal"),
        ("A = 2**100  # int [0, 2]", "exponent or shift above"),
        ("A = 1 << 65  # int [0, 2]", "exponent or shift above"),
        ('A = "a" * 3  # choice ["aaa"]', "arithmetic on a non-number"),
        ("A = 1  # int [0, 2] logg", "unexpected flags"),
        ("A = 1  # float [0, 2] multiple_of B", "int constants only"),
        ("A = True  # bool [0, 1]", "bool takes no bounds"),
        ("A = 1", "trailing comment"),
        ("  A = 1  # int [0, 2]", "first column"),
    ],
)
def test_every_consumer_refuses_the_same_lines(tmp_path: Path, line: str, fragment: str) -> None:
    source = f"{constants.BLOCK_START}\n{line}\n{constants.BLOCK_END}\n"
    with pytest.raises(constants.BlockError, match="line 2") as info:
        constants.parse_block(source)
    assert fragment in str(info.value)
    with pytest.raises(runtime.ConfigError, match=re.escape(fragment)):
        runtime_values(source, tmp_path)
    with pytest.raises(SpaceError, match=re.escape(fragment)):
        SearchSpace.from_train_source(source)


def test_a_code_edit_is_held_to_the_same_grammar() -> None:
    """A code-mode edit that keeps the markers but writes a line the training would refuse (exit 2) is refused when
    the candidate is built; one in autoresearch's notation is accepted."""
    source = TRAIN.read_text()
    line = next(x for x in source.splitlines() if x.startswith("TOTAL_BATCH_TOKENS = "))
    power = line.replace("TOTAL_BATCH_TOKENS = 8192", "TOTAL_BATCH_TOKENS = 2**13")
    assert constants.values(apply_edits(source, [{"search": line, "replace": power}]))["TOTAL_BATCH_TOKENS"] == 8192
    for broken in (line.replace("= 8192", "= int(8192)"), line.split("#")[0].rstrip()):
        with pytest.raises(EditError, match="breaks its grammar"):
            apply_edits(source, [{"search": line, "replace": broken}])


def test_autoresearch_notation_trains(tmp_path: Path) -> None:
    """`TOTAL_BATCH_TOKENS = 2**19`, as autoresearch writes it: the real runtime's parse and train.py's own checks
    accept it and the training starts its 32 accumulated micro-batches (a configuration error exits 2 before that
    line). One step of 2**19 tokens takes a minute on the loaded 2-core machine, so the test stops it there."""
    env = tiny_corpus_env(tmp_path)
    tiny = {"DEPTH": 1, "ASPECT_RATIO": 16, "HEAD_DIM": 32, "SEQ_LEN": 64, "DEVICE_BATCH_SIZE": 256}
    source = constants.rewrite(TRAIN.read_text(), tiny)
    source, n = re.subn(r"^TOTAL_BATCH_TOKENS = \S+", "TOTAL_BATCH_TOKENS = 2**19", source, count=1, flags=re.M)
    assert n == 1 and constants.values(source)["TOTAL_BATCH_TOKENS"] == 524288
    script = tmp_path / "exp" / "train.py"
    script.parent.mkdir()
    script.write_text(source)
    args = ["--budget-s", "1", "--corpus", env["CORPUS"], "--vocab-size", "512", "--eval-tokens", "8192"]
    with subprocess.Popen(
        [sys.executable, str(script), *args, "--dtype", "fp32"],
        env=env,
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            started = next((line for line in proc.stdout or [] if line.startswith("model_dim=")), None)
        finally:
            proc.kill()
        stderr = (proc.stderr.read() if proc.stderr else "")[-2000:]
    assert proc.returncode != runtime.EXIT_CONFIG, stderr
    assert started is not None and "accum_steps=32" in started, stderr


def test_gpt_stays_importable_alone() -> None:
    """gpt/ runs as a subprocess with nothing of the project but itself: the grammar needs the standard library only."""
    code = "import sys, gpt.constants; bad = [m for m in sys.modules if m.split('.')[0] in "
    code += "('mechanisms', 'nodes', 'graphs', 'trials', 'checkpoints', 'torch', 'numpy')]; sys.exit(bool(bad))"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
