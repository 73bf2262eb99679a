"""The search space: parsing the constants block, checking changes, coercion and geometry."""

import random

import pytest

from mechanisms.space import SearchSpace, SpaceError, group_of

SAMPLE = """
import math
# ---- hyperparameters: the inner loop edits this block ----
DEPTH = 4                  # int [1, 12]
MATRIX_LR = 0.02           # float [0.001, 0.2] log
OPTIMIZER = "muon"         # choice ["muon", "adamw"]
TOTAL_BATCH_SIZE = 2**14   # int [2**10, 2**20] log
USE_SOFTCAP = True         # bool
WARMUP_RATIO = 0.0         # float [0, 0.5]
ASPECT_RATIO = 64          # int [16, 128] frozen
# ---- end of hyperparameters ----
x = 1  # int [0, 2] outside the block is ignored
"""


def block(line: str) -> str:
    return f"# ---- hyperparameters: the inner loop edits this block ----\n{line}\n# ---- end of hyperparameters ----\n"


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_train_source(SAMPLE)


def test_parses_every_kind(space: SearchSpace) -> None:
    assert space.names == ("DEPTH", "MATRIX_LR", "OPTIMIZER", "TOTAL_BATCH_SIZE", "USE_SOFTCAP", "WARMUP_RATIO",
                           "ASPECT_RATIO")  # fmt: skip
    assert space["TOTAL_BATCH_SIZE"].default == 16384 and space["TOTAL_BATCH_SIZE"].low == 1024
    assert space["MATRIX_LR"].log and space["MATRIX_LR"].kind == "float"
    assert space["OPTIMIZER"].choices == ("muon", "adamw")
    assert space["USE_SOFTCAP"].kind == "bool" and space["ASPECT_RATIO"].frozen
    assert space.free_names() == space.names[:-1]
    assert SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("A = 1  # int [1]", "needs [low, high]"),
        ("A = 1  # integer [1, 2]", "must start with a kind"),
        ("A = 1", "trailing comment"),
        ("A = 1  # int [1, 2] logg", "unexpected flags"),
        ('A = "x"  # choice ["y"]', "not one of"),
        ("A = 1.0  # float [0, 1] log", "log scale needs low > 0"),
        ("A = foo()  # int [0, 2]", "not a literal"),
        ("A = 20  # int [0, 10]", "outside"),
        ("A = 1  # int [0, 10", "cannot tokenize"),
        ("A = B = 1  # int [0, 10]", "NAME = literal"),
        ("A = 1  # bool", "takes a bool"),
    ],
)
def test_malformed_lines_name_the_line(line: str, fragment: str) -> None:
    with pytest.raises(SpaceError, match="line 2") as info:
        SearchSpace.from_train_source(block(line))
    assert fragment in str(info.value)


def test_missing_markers_and_duplicates() -> None:
    with pytest.raises(SpaceError, match="exactly one hyperparameter block"):
        SearchSpace.from_train_source("DEPTH = 4  # int [1, 12]\n")
    with pytest.raises(SpaceError, match="duplicate"):
        SearchSpace.from_train_source(block("A = 1  # int [0, 2]\nA = 2  # int [0, 2]"))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"matrix_lr": 0.05}, "did you mean MATRIX_LR"),
        ({"DEPTH": 40}, "outside [1, 12]"),
        ({"DEPTH": 4.5}, "takes an int"),
        ({"DEPTH": True}, "takes an int"),
        ({"MATRIX_LR": "fast"}, "takes a float"),
        ({"MATRIX_LR": float("nan")}, "finite"),
        ({"USE_SOFTCAP": 1}, "takes a bool"),
        ({"OPTIMIZER": "sgd"}, "not one of"),
        ({"ASPECT_RATIO": 32}, "frozen"),
        ({"DEPTH": 4}, "no-op"),
        ({"DEPTH": 5, "MATRIX_LR": 0.03, "OPTIMIZER": "adamw", "USE_SOFTCAP": False}, "at most 3"),
        ({}, "no changes"),
        (["DEPTH"], "must be a mapping"),
    ],
)
def test_check_changes_refuses(space: SearchSpace, changes: object, fragment: str) -> None:
    errors = space.check_changes(changes, space.defaults())
    assert any(fragment in e for e in errors), errors


def test_check_changes_accepts_and_honours_settings_frozen(space: SearchSpace) -> None:
    good = {"DEPTH": 6, "MATRIX_LR": 0.04, "OPTIMIZER": "adamw"}
    assert space.check_changes(good, space.defaults()) == []
    assert space.check_changes(good, space.defaults(), frozen=["DEPTH"]) == ["DEPTH is frozen"]


def test_coerce_reads_llm_strings(space: SearchSpace) -> None:
    assert space.coerce("TOTAL_BATCH_SIZE", "2**15") == 32768
    assert space.coerce("MATRIX_LR", "0.02") == 0.02
    assert space.coerce("DEPTH", 6.0) == 6
    assert space.coerce("USE_SOFTCAP", "false") is False
    assert space.coerce("OPTIMIZER", "AdamW") == "adamw"
    for name, value in (("DEPTH", "4.5"), ("USE_SOFTCAP", "maybe"), ("OPTIMIZER", "sgd"), ("DEPTH", "__import__")):
        with pytest.raises(SpaceError):
            space.coerce(name, value)
    with pytest.raises(SpaceError, match="did you mean"):
        space.coerce("depth", 3)


def test_geometry(space: SearchSpace) -> None:
    base = space.defaults()
    unit = space.normalise(base)
    assert all(0.0 <= u <= 1.0 for u in unit)
    assert space.normalise({**base, "MATRIX_LR": 0.2})[1] == pytest.approx(1.0)
    assert space.distance(base, base) == 0.0
    assert space.distance(base, {**base, "OPTIMIZER": "adamw"}) == 1.0
    assert space.distance(base, {**base, "DEPTH": 5}) == pytest.approx(1 / 11)
    rng = random.Random(0)
    for _ in range(50):
        config = space.sample(rng)
        assert space.check_values(config) == [] and config["ASPECT_RATIO"] == 64
        names = rng.sample(space.free_names(), 2)
        changes = space.neighbour(base, rng, names, 0.1)
        assert set(changes) == set(names) and space.check_changes(changes, base) == []


def test_levels_and_groups(space: SearchSpace) -> None:
    assert space.levels("DEPTH", 3) == [1, 6, 12]
    assert space.levels("MATRIX_LR", 3)[1] == pytest.approx(0.001 * 200**0.5)
    assert space.levels("DEPTH", 3, center=4, step=0.1) == [3, 4, 5]
    assert space.levels("OPTIMIZER", 2, center="adamw") == ["adamw", "muon"]
    assert space.levels("USE_SOFTCAP", 5) == [False, True]
    assert group_of("WARMUP_RATIO") == "schedule" and group_of("EMBEDDING_LR") == "optimisation"
    assert group_of("TOTAL_BATCH_SIZE") == "batch" and group_of("HEAD_DIM") == "architecture"
    assert space.groups() == {
        "architecture": ("DEPTH", "USE_SOFTCAP"),
        "optimisation": ("MATRIX_LR", "OPTIMIZER"),
        "schedule": ("WARMUP_RATIO",),
        "batch": ("TOTAL_BATCH_SIZE",),
    }


def test_the_batch_rule_is_declared_checked_and_kept_by_every_move() -> None:
    from trials.launcher import TRAIN_PATH

    real = SearchSpace.from_train_source(TRAIN_PATH.read_text())
    assert real["TOTAL_BATCH_TOKENS"].multiple_of == ("DEVICE_BATCH_SIZE", "SEQ_LEN")
    base = real.defaults()
    errors = real.check_changes({"DEVICE_BATCH_SIZE": 12}, base)  # 12 * 256 does not divide 8192
    assert errors == [
        "TOTAL_BATCH_TOKENS=8192 is not a multiple of DEVICE_BATCH_SIZE*SEQ_LEN=3072 (train.py refuses it)"
    ]
    fixed = real.repair({**base, "DEVICE_BATCH_SIZE": 12})
    assert fixed["TOTAL_BATCH_TOKENS"] == 9216 and real.constraint_errors(fixed) == []
    rng = random.Random(0)
    for _ in range(200):
        assert real.constraint_errors(real.sample(rng)) == []
        step = real.neighbour(base, rng, [rng.choice(["DEVICE_BATCH_SIZE", "SEQ_LEN", "TOTAL_BATCH_TOKENS"])], 0.3)
        assert not step or real.check_changes(step, base, max_changes=None) == [], step  # {}: snapped back
    assert SearchSpace.from_dict(real.to_dict()) == real
    with pytest.raises(SpaceError, match="not integer parameters"):
        SearchSpace.from_train_source(
            "# ---- hyperparameters: the inner loop edits this block ----\n"
            "A = 8  # int [1, 64] multiple_of B\nB = 0.5  # float [0.1, 1.0]\n"
            "# ---- end of hyperparameters ----\n"
        )
