"""Generate mode against a real OpenAI-compatible endpoint: the embedded llama.cpp server, started as a plain endpoint
and reached only through `--llm-base-url`, as any capable model's server would be. The small model cannot write a
mechanism; what matters is that the run goes to the end and every refusal is recorded with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints.run_folder import Ledger
from llm.local_server import MODEL_ALIAS, LocalModelServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "ablation" / "data" / "surrogate_samples.csv"


@pytest.mark.slow
def test_a_generate_mode_run_against_a_plain_endpoint_goes_to_the_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # 8192 tokens: SmolLM2's trained context; the generate prompt alone is about 4,000 tokens
    with LocalModelServer(n_ctx=8192, log_path=tmp_path / "server.log") as server:
        command = [
            sys.executable, "-m", "graphs.bilevel", "--llm-base-url", server.base_url, "--llm-model", MODEL_ALIAS,
            "--generate-mode", "generate", "--level", "1+2", "--executor", f"surrogate:{SAMPLES}",
            "--iterations", "1", "--segment", "1", "--llm-attempts", "2", "--llm-max-tokens", "512",
            "--run-dir", str(run_dir),
        ]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "none", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "all iterations done" and summary["experiments"] == 2 and summary["surrogate"]
    ledger = Ledger(run_dir)
    start = next(ledger.events("run_start"))
    assert server.base_url in start["llm"]  # reached as an endpoint, not as the embedded model
    generated = [e for e in ledger.events("llm_call") if e.get("node") == "generate"]
    assert generated, "the generate node never asked the endpoint"
    assert all(e["ok"] or e["error"] for e in generated)  # a failed answer always says why
    validated = list(ledger.events("validate"))
    assert validated and all(e["ok"] or e["errors"] for e in validated)  # every refusal has its reasons
    for event in validated:
        if event.get("mechanism"):  # a candidate was produced: its folder keeps it, whatever the verdict
            folder = run_dir / "mechanisms" / event["mechanism"].replace("@", "-")
            assert json.loads((folder / "validation.json").read_text())["ok"] == event["ok"]
            assert (folder / "source.py").exists()
    refused = [h for h in summary["history"] if h["event"] == "refused"]
    assert all(h["reason"] for h in refused)
