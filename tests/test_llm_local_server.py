"""LocalModelServer lifecycle: a tiny fake OpenAI-compatible server for the fast tests, the real model for slow ones."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from llm.client import LLMSettings, ServerWatchdog, open_chat_model
from llm.local_server import LocalModelServer, LocalServerError
from llm.structured import LLMBudget, ask_structured

REPO = Path(__file__).resolve().parents[1]

FAKE_SERVER = textwrap.dedent(
    """
    import argparse, json, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    parser = argparse.ArgumentParser()
    for flag in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--n_threads"):
        parser.add_argument(flag)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    if args.mode == "fail":
        print("fake server: cannot load model", flush=True)
        sys.exit(3)
    if args.mode == "hang":
        time.sleep(600)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply({"object": "list", "data": [{"id": args.model_alias, "object": "model"}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = request["tools"][0]["function"]["name"]
            call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": '{"word": "ok"}'}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            self.reply({
                "id": "x", "object": "chat.completion", "created": 0, "model": args.model_alias,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            })

    HTTPServer((args.host, int(args.port)), Handler).serve_forever()
    """
)


class Word(BaseModel):
    word: str


def process_alive(pid: int) -> bool:
    """Alive means present and not a zombie (a reparented zombie may wait for a reaper that never comes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_until(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture
def fake_launcher(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return (sys.executable, str(script))


def fake_server(launcher: tuple[str, ...], tmp_path: Path, mode: str = "ok", **kwargs: Any) -> LocalModelServer:
    return LocalModelServer(
        tmp_path / "model.gguf", launcher=(*launcher, "--mode", mode), log_path=tmp_path / "server.log", **kwargs
    )


def test_start_answers_and_close_leaves_nothing(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    with fake_server(fake_launcher, tmp_path) as server:
        pid = server.pid
        assert pid is not None and server.is_alive() and os.getpgid(pid) == pid  # its own process group
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.start_seconds is not None and server.start_seconds < 30
        assert "--n_ctx" in server.command() and "4096" in server.command()
    assert not process_alive(pid) and group_members(pid) == []
    server.close()  # idempotent


def test_startup_failure_reports_the_log_tail(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    with pytest.raises(LocalServerError, match="exited with code 3 while starting:\n.*cannot load model"):
        fake_server(fake_launcher, tmp_path, mode="fail").start()


def test_startup_timeout_kills_the_server(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    server = fake_server(fake_launcher, tmp_path, mode="hang", startup_timeout_s=1.0)
    with pytest.raises(LocalServerError, match="did not answer .* within 1 s"):
        server.start()
    assert server.pid is None and not server.is_alive()


def test_a_hung_server_is_killed_after_the_grace_period(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    server = fake_server(fake_launcher, tmp_path, stop_grace_s=0.5).start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process does not act on SIGTERM
    started = time.monotonic()
    server.close()
    assert not process_alive(pid) and time.monotonic() - started < 5


def test_ensure_alive_restarts_a_dead_server_on_the_same_url(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    with fake_server(fake_launcher, tmp_path) as server:
        url, first = server.base_url, server.pid
        assert server.ensure_alive() is False
        os.kill(first or 0, signal.SIGKILL)
        wait_until(lambda: not server.is_alive())
        assert server.ensure_alive() is True
        assert server.is_alive() and server.pid != first and server.base_url == url and server.restarts == 1


def test_watchdog_restarts_the_server_before_a_structured_call(fake_launcher: tuple[str, ...], tmp_path: Path) -> None:
    with fake_server(fake_launcher, tmp_path) as server:
        llm = ChatOpenAI(
            base_url=server.base_url,
            api_key="local",
            model="smollm2",
            max_retries=0,
            callbacks=[ServerWatchdog(server)],
        )
        os.kill(server.pid or 0, signal.SIGKILL)
        wait_until(lambda: not server.is_alive())
        events: list[dict[str, Any]] = []
        answer = ask_structured(
            llm, Word, [HumanMessage("say ok")], node="n", level="L1", budget=LLMBudget(), record=events.append
        )
        assert answer.value == Word(word="ok") and answer.attempts == 1 and server.restarts == 1
        assert (events[0]["prompt_tokens"], events[0]["completion_tokens"], events[0]["model"]) == (11, 7, "smollm2")


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from llm.local_server import LocalModelServer
    launcher, log = json.loads(sys.argv[1]), Path(sys.argv[2])
    model = None if launcher is None else Path("model.gguf")
    server = LocalModelServer(model, log_path=log, **({} if launcher is None else {"launcher": launcher})).start()
    print(server.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def child_with_server(tmp_path: Path) -> Iterator[Any]:
    """Start a python process that starts a server; yields a function returning (child process, server pid)."""
    children: list[subprocess.Popen[str]] = []

    def start(launcher: tuple[str, ...] | None) -> tuple[subprocess.Popen[str], int]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-c", CHILD, json.dumps(launcher), str(tmp_path / "child-server.log")]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"child did not start a server: {line!r}"
        return child, int(line)

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_parent_death_leaves_no_orphan(child_with_server: Any, fake_launcher: tuple[str, ...], sig: int) -> None:
    child, server_pid = child_with_server((*fake_launcher, "--mode", "ok"))
    assert process_alive(server_pid)
    child.send_signal(sig)
    child.wait(timeout=15)
    assert wait_until(lambda: not process_alive(server_pid)), f"server {server_pid} outlived its parent ({sig!r})"
    assert group_members(server_pid) == []


# ---- the real embedded model ---------------------------------------------------------------------------------


class Change(BaseModel):
    name: Literal["DEPTH", "MATRIX_LR", "WARMUP_RATIO"]
    value: str


class Proposal(BaseModel):
    """Hyperparameter changes for the next training run."""

    changes: list[Change] = Field(min_length=1, max_length=3)
    hypothesis: str
    expected_direction: Literal["lower", "higher"]


PROMPT = [
    SystemMessage(
        "You tune the hyperparameters of a small GPT pretraining run; lower val_bpb is better. "
        "Current values: DEPTH=4, MATRIX_LR=0.02, WARMUP_RATIO=0.0. Last val_bpb: 1.92."
    ),
    HumanMessage("Propose 1 to 3 changes, a one-sentence hypothesis, and the expected direction of val_bpb."),
]


@pytest.mark.slow
def test_real_model_answers_a_structured_proposal(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    settings = LLMSettings.resolve(seed=0, env={})
    with open_chat_model(settings, server_log=tmp_path / "server.log") as (llm, description):
        assert description.startswith("embedded smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf")
        server = llm.callbacks[0].server  # type: ignore[index, union-attr]
        pid = server.pid
        answer = ask_structured(
            llm, Proposal, PROMPT, node="propose", level="L1", budget=LLMBudget(), record=events.append
        )
        assert answer.value is not None, answer.errors
        assert all(event["prompt_tokens"] > 0 and event["completion_tokens"] > 0 for event in events)
        assert events[-1]["model"] == "smollm2" and events[-1]["ok"]
        print(f"\nstart {server.start_seconds:.2f} s; calls {json.dumps(events)}; value {answer.value}")
    assert re.search(r"n_ctx\s+=\s+4096", (tmp_path / "server.log").read_text())
    assert not process_alive(pid) and group_members(pid) == []


@pytest.mark.slow
def test_real_model_respects_max_tokens(tmp_path: Path) -> None:
    with open_chat_model(LLMSettings(max_tokens=5), server_log=tmp_path / "server.log") as (llm, _):
        reply = llm.invoke("Write a long story about a dragon.")
    assert reply.usage_metadata is not None and 0 < reply.usage_metadata["output_tokens"] <= 5


@pytest.mark.slow
def test_real_server_dies_with_a_killed_parent(child_with_server: Any) -> None:
    child, server_pid = child_with_server(None)
    assert process_alive(server_pid)
    child.kill()
    child.wait(timeout=15)
    assert wait_until(lambda: not process_alive(server_pid)), f"server {server_pid} survived kill -9 of its parent"
    assert group_members(server_pid) == []
