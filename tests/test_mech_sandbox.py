"""The sandbox contains hostile source even when the policy is bypassed on purpose (enforce_policy=False)."""

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from mechanisms.base import MechanismSpec, view_payload
from mechanisms.sandbox import SandboxedMechanism, SandboxError, SandboxLimits
from mechanisms.space import SearchSpace

SPACE = SearchSpace.from_train_source(
    "# ---- hyperparameters: the inner loop edits this block ----\n"
    "DEPTH = 4  # int [1, 12]\nMATRIX_LR = 0.02  # float [0.001, 0.2] log\n"
    "# ---- end of hyperparameters ----\n"
)
FAST = SandboxLimits(wall_s=1.0, startup_s=3.0, cpu_s=1)


def payload(**settings: Any) -> dict[str, Any]:
    return view_payload(trace=[], space=SPACE, incumbent=SPACE.defaults(), best_bpb=None, iteration=0, seed=1,
                        settings=settings)  # fmt: skip


def mechanism(body: str, limits: SandboxLimits = FAST) -> SandboxedMechanism:
    source = f'NAME = "hostile"\nTARGET = "propose"\nimport random\n\ndef propose(view):\n{body}\n'
    return SandboxedMechanism(MechanismSpec.from_source(source), limits, enforce_policy=False)


def no_llm(guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
    raise AssertionError("not expected")


def run_hostile(body: str, limits: SandboxLimits = FAST, **settings: Any) -> SandboxError:
    with pytest.raises(SandboxError) as info:
        mechanism(body, limits)(payload(**settings), no_llm)
    return info.value


def test_infinite_loop_is_killed() -> None:
    assert run_hostile("    while True:\n        pass").kind in ("timeout", "cpu")


def test_huge_allocation_hits_the_memory_limit() -> None:
    assert run_hostile("    return {'x': bytearray(8 << 30)}").kind == "memory"


def test_fork_is_refused() -> None:
    error = run_hostile("    random._os.fork()\n    return {}")
    assert error.kind == "refused" and "os.fork" in str(error)


def test_planted_secret_is_not_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILEVEL_PLANTED_SECRET", "s3cr3t-value")
    body = "    env = dict(random._os.environ)\n    return {'changes': {}, 'hypothesis': repr(env)}"
    out = mechanism(body)(payload(), no_llm)
    assert "s3cr3t-value" not in out["hypothesis"] and "BILEVEL_PLANTED_SECRET" not in out["hypothesis"]


def test_writing_a_file_is_refused() -> None:
    target = Path("/tmp") / f"mechanism-escape-{uuid.uuid4().hex}"
    body = "    o = random._os\n    o.open(view.settings['path'], o.O_WRONLY | o.O_CREAT)\n    return {}"
    error = run_hostile(body, path=str(target))
    assert error.kind == "refused" and "open" in str(error)
    assert not target.exists()


def test_socket_is_refused() -> None:
    error = run_hostile("    import socket\n    socket.create_connection(('1.1.1.1', 80))\n    return {}")
    assert error.kind == "refused" and "import socket" in str(error)


def test_object_graph_escape_is_refused() -> None:
    body = (
        "    for cls in ().__class__.__base__.__subclasses__():\n"
        "        if cls.__name__ == '_wrap_close':\n"
        "            cls.__init__.__globals__['system']('touch pwned')\n"
        "    return {}"
    )
    error = run_hostile(body)
    assert error.kind == "refused" and "os.system" in str(error)


def test_huge_output_is_refused() -> None:
    error = run_hostile("    return {'changes': {}, 'hypothesis': 'x' * 2_000_000, 'expected_direction': ''}")
    assert error.kind == "bad_output" and "larger than" in str(error)


def test_non_json_output_and_crash_are_reported() -> None:
    assert run_hostile("    return {'x': object()}").kind == "output"
    error = run_hostile("    return 1 / 0")
    assert error.kind == "entry" and "ZeroDivisionError" in str(error) and "<mechanism>" in error.stderr


def test_policy_is_enforced_by_default() -> None:
    spec = MechanismSpec.from_source('NAME = "x"\nTARGET = "propose"\nimport os\ndef propose(view):\n    return {}\n')
    with pytest.raises(SandboxError) as info:
        SandboxedMechanism(spec)
    assert info.value.kind == "policy" and "'os' is forbidden" in str(info.value)


def test_ask_llm_round_trip_is_proxied_and_counted() -> None:
    requests = []

    def ask(guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
        requests.append((guidance, constraints))
        return {"changes": {"DEPTH": 4 + len(requests)}, "hypothesis": "llm", "expected_direction": "down"}

    body = (
        "    first = view.ask_llm('first')\n"
        "    second = view.ask_llm('second', constraints={'only': ['DEPTH']})\n"
        "    print('chatter on stdout does not break the protocol')\n"
        "    return {'changes': second['changes'], 'hypothesis': first['hypothesis'], 'expected_direction': 'x'}"
    )
    mech = mechanism(body)
    out = mech(payload(), ask)
    assert out["changes"] == {"DEPTH": 6} and out["hypothesis"] == "llm"
    assert requests == [("first", None), ("second", {"only": ["DEPTH"]})]
    assert mech.last_stats is not None and mech.last_stats.llm_calls == [2]


def test_ask_llm_failures_and_call_limit() -> None:
    def broken(guidance: str, constraints: dict[str, Any] | None) -> dict[str, Any]:
        raise RuntimeError("model offline")

    error = run_hostile("    return view.ask_llm('x')")
    assert error.kind == "llm"
    with pytest.raises(SandboxError) as info:
        mechanism("    return view.ask_llm('x')")(payload(), broken)
    assert info.value.kind == "llm" and "model offline" in str(info.value)
    loop = "    while True:\n        view.ask_llm('again')"
    with pytest.raises(SandboxError) as info:
        mechanism(loop)(payload(), lambda g, c: {"changes": {"DEPTH": 5}})
    assert info.value.kind == "llm_calls"


def test_child_runs_in_a_private_scratch_directory() -> None:
    """Its cwd is the sandbox's own /tmp: a file written there (linter off, so the write is allowed) is not on the
    host, and the host's /tmp is not visible in it."""
    name = f"mechanism-scratch-{uuid.uuid4().hex}"
    marker = Path("/tmp") / f"host-only-{uuid.uuid4().hex}"
    marker.write_text("host")
    body = (
        "    o = random._os\n"
        f"    o.close(o.open({name!r}, o.O_WRONLY | o.O_CREAT))\n"
        f"    seen = sorted(o.listdir('/tmp'))\n"
        "    return {'changes': {}, 'hypothesis': o.getcwd() + ' ' + ' '.join(seen), 'expected_direction': ''}"
    )
    source = f'NAME = "scratch"\nTARGET = "propose"\nimport random\n\ndef propose(view):\n{body}\n'
    try:
        out = SandboxedMechanism(MechanismSpec.from_source(source), FAST, enforce_policy=False, lint=False)(
            payload(), no_llm
        )
    finally:
        marker.unlink()
    assert out["hypothesis"] == f"/tmp {name}" and out["hypothesis"] != os.getcwd()
    assert not (Path("/tmp") / name).exists()
