"""LangGraph Studio's export: `langgraph dev` (the in-memory API server of langgraph-cli, no browser, analytics off)
serves both graphs of langgraph.json, with the nodes the dashboard draws."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dashboard_support import free_port

from dashboard.graph_svg import topologies

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
INNER = {"__start__", "propose", "train", "evaluate", "decide", "__end__"}
OUTER = {"__start__", "run_inner", "compare", "adjust", "analyze", "generate", "validate", "inject", "__end__"}


def call(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"langgraph dev exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if call(base, "/ok").get("ok"):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(1)
    pytest.fail(f"langgraph dev did not answer within {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


def test_langgraph_dev_serves_both_graphs(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
    }
    env.pop("LANGSMITH_API_KEY", None)
    command = [str(Path(sys.executable).with_name("langgraph")), "dev", "--no-browser", "--no-reload"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--config", str(REPO / "langgraph.json")]
    log = tmp_path / "langgraph-dev.log"
    with open(log, "wb") as out:
        # langgraph.json's paths are relative to the working folder; the server keeps its state in .langgraph_api/
        # there (ignored by git)
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_ready(base, process, log)
        assistants = call(base, "/assistants/search", {"limit": 10})
        by_graph = {a["graph_id"]: a["assistant_id"] for a in assistants}
        assert set(by_graph) == {"inner", "bilevel"}
        served = {}
        for graph_id, assistant in by_graph.items():
            drawn = call(base, f"/assistants/{assistant}/graph")
            served[graph_id] = ({n["id"] for n in drawn["nodes"]}, {(e["source"], e["target"]) for e in drawn["edges"]})
        assert served["inner"][0] == INNER
        assert {("decide", "propose"), ("propose", "train"), ("evaluate", "decide")} <= served["inner"][1]
        assert served["bilevel"][0] == OUTER
        assert {("run_inner", "compare"), ("validate", "generate"), ("inject", "run_inner")} <= served["bilevel"][1]
        ours = topologies()
        assert not isinstance(ours, str), ours
        assert set(ours["inner"].nodes) == served["inner"][0]  # the dashboard draws what Studio is given
        assert set(ours["outer"].nodes) == served["bilevel"][0]
        assert {(s, t) for s, t, _ in ours["outer"].edges} == served["bilevel"][1]
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """The server and whatever it started (its own process group)."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
