"""The dashboard over a real run folder (made by the graphs with a scripted model) and the packed real ablation:
every page renders what the folders hold; a half-written or damaged folder gives a page that says so; nothing
outside the served folders can be read; nothing is written."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from dashboard_support import append_experiment, events, make_run, serve, served_runs
from starlette.testclient import TestClient

from dashboard import folders
from dashboard.folders import Refused, Served
from dashboard.server import create_app
from dashboard.svg import tick_label, ticks
from dashboard.trace import parse
from graphs.cli import main

REPO = Path(__file__).resolve().parent.parent
SECRET = "top-secret-outside-the-served-folder"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with one Level-2 run and the packed real ablation unpacked next to it; a secret file outside."""
    return served_runs(tmp_path_factory.mktemp("dash"), SECRET, with_report=True)


@pytest.fixture(scope="module")
def client(root: Path) -> TestClient:
    return TestClient(create_app(Served.of([root])), base_url="http://127.0.0.1")


def test_index_lists_the_run_and_the_ablation(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'href="/run/0/run-a"' in page.text
    assert 'href="/ablation/0/ablation-real"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_run_page_draws_graphs_staircase_and_tables(client: TestClient, root: Path) -> None:
    records = [e for e in events(root / "run-a") if e["kind"] == "experiment"]
    page = client.get("/run/0/run-a").text
    # the inner graph with the active mechanism on propose, its call count and its segments
    calls = [e for e in events(root / "run-a") if e["kind"] == "mechanism_call"]
    active = [e for e in events(root / "run-a") if e["kind"] == "segment_start"][-1]["mechanism"]
    badge = re.search(r'data-node="propose">.*?<text class="badge"[^>]*>([^<]*)</text>', page)
    assert badge, "propose carries the active mechanism"
    n_calls = sum(c["mechanism"] == active for c in calls)
    assert badge.group(1).startswith(f"{active} · {n_calls} calls · segments ")
    for node in ("run_inner", "compare", "adjust", "analyze", "generate", "validate", "inject"):
        assert f'data-node="{node}"' in page
    # one point per experiment, coloured by its proposal source; the crash drawn as a cross
    points = re.findall(
        r'<a href="/experiment/(e\d{4})/0/run-a" data-id="e\d{4}"><(circle|path) class="pt st-(\w+) src-(\w+)', page
    )
    assert [(p[0], p[3]) for p in points] == [(r["id"], r["proposal_source"]) for r in records]
    assert {p[3] for p in points} >= {"baseline", "llm"}
    assert any(p[2] == "crash" and p[1] == "path" for p in points)
    assert 'class="baseline"' in page and 'class="segment seg-' in page
    rows = re.findall(r'<tr data-status="(\w+)" data-source="(\w+)" data-id="(e\d{4})">', page)
    assert [r[2] for r in rows] == [r["id"] for r in records]
    assert "mechanisms-table" in page and "llm-table" in page
    summary = json.loads((root / "run-a" / "summary.json").read_text())  # the same counts as the run's own summary
    kept, discarded, crashed = re.findall(
        r'after the baseline\)</span><span class="value">(\d+) · (\d+) · (\d+)<', page
    )[0]
    assert (int(kept), int(crashed)) == (summary["kept"], summary["crashes"])
    assert int(kept) + int(discarded) + int(crashed) == len(records) - 1


def test_experiment_page_shows_diff_exchange_result_and_timing(client: TestClient, root: Path) -> None:
    records = [e for e in events(root / "run-a") if e["kind"] == "experiment"]
    llm_made = next(r for r in records if r.get("proposal_source") == "llm")
    page = client.get(f"/experiment/{llm_made['id']}/0/run-a").text
    assert "Diff of train.py" in page and 'class="gd"' in page  # a highlighted removed line of the diff
    assert "LLM call" in page and "answer accepted" in page
    assert "mechanism call" in page
    assert "training (budget)" in page
    assert llm_made["hypothesis"] in page


def test_mechanism_page_shows_source_validation_and_verdict(client: TestClient, root: Path) -> None:
    trace = events(root / "run-a")
    injected = [e for e in trace if e["kind"] == "inject" and e.get("injected")]
    if injected:  # validated in the sandbox: its folder holds source, diagnosis and validation report
        page = client.get(f"/mechanism/{injected[0]['mechanism']}/0/run-a").text
        assert page.count('class="hl"') >= 3
        assert "injected, replacing" in page
    else:  # refused by the validator on this machine: the refusal and its reason are on its page
        refused = next(e for e in trace if e["kind"] == "validate" and not e["ok"])
        page = client.get(f"/mechanism/{refused['mechanism']}/0/run-a").text
        assert 'verdict-invalid">invalid' in page and f"invalid</span> at {refused['stage']}" in page
    start = next(e for e in trace if e["kind"] == "segment_start")["mechanism"]
    page = client.get(f"/mechanism/{start}/0/run-a").text
    assert '<span class="nf">propose</span>' in page  # its source, highlighted
    folder = root / "run-a" / "mechanisms" / start.replace("@", "-")
    assert ("built-in mechanism: its source" in page) == (not folder.exists())  # never injected: the built-in's
    calls = sum(e["kind"] == "mechanism_call" and e["mechanism"] == start for e in trace)
    assert f'calls (failed)</span><span class="value">{calls} (0)' in page


def test_llm_page_counts_calls_and_failures(client: TestClient, root: Path) -> None:
    calls = [e for e in events(root / "run-a") if e["kind"] == "llm_call"]
    page = client.get("/llm/0/run-a").text
    assert f'<span class="value">{len(calls)}</span>' in page
    assert page.count('class="call ') == len(calls)
    refused = sum(not c["ok"] for c in calls)
    assert f'Refused answers and errors <span class="count">{refused}</span>' in page


def test_ablation_page_has_groups_with_intervals_and_runs(client: TestClient) -> None:
    page = client.get("/ablation/0/ablation-real").text
    for group in ("A", "C", "tpe"):
        assert f'<tr data-group="{group}"><td>{group}</td>' in page
    assert 'class="chart forest"' in page and 'class="chart curves"' in page
    assert 'href="/run/0/ablation-real/runs/C-r00"' in page
    figures = re.findall(r'<img src="(/file/0/ablation-real/report/[\w.]+\.png)"', page)
    assert len(figures) == len(list((REPO / "docs/results/ablation-real").glob("*.png")))
    png = client.get(figures[0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert client.get("/file/0/ablation-real/report/report.md").status_code == 404  # only the PNG figures
    run = client.get("/run/0/ablation-real/runs/C-r00").text
    assert "noise floor: the baseline re-trained 5×" in run  # the ablation's noise floor drawn on its runs
    assert "experiments/e0001/ is missing" in client.get("/experiment/e0001/0/ablation-real/runs/C-r00").text


def test_compare_page_puts_two_runs_side_by_side(client: TestClient) -> None:
    page = client.get("/compare", params={"a": "0/run-a", "b": "0/ablation-real/runs/A-r00"}).text
    assert page.count('class="chart staircase"') == 2
    assert "Settings that differ" in page and "<td>level</td>" in page


def test_half_written_run_folder_gives_clear_pages(tmp_path: Path, root: Path) -> None:
    run = tmp_path / "runs" / "torn"
    shutil.copytree(root / "run-a", run)
    with open(run / "trace.jsonl", "a") as f:
        f.write('{"kind": "experiment", "id": "e09')  # a writer killed mid-line
    (run / "run.json").unlink()
    shutil.rmtree(run / "experiments" / "e0002")
    (run / "summary.json").write_text("{not json")
    bare = tmp_path / "runs" / "just-started"
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"level": "2", "iterations": 4}))
    c = TestClient(create_app(Served.of([tmp_path / "runs"])), base_url="http://127.0.0.1")
    page = c.get("/run/0/torn")
    assert page.status_code == 200
    assert "1 line(s) not valid JSON were skipped" in page.text
    assert "run.json is missing" in page.text and "summary.json is not valid JSON" in page.text
    assert (
        "diff.patch is missing" in c.get("/experiment/e0002/0/torn").text
        or "e0002/ is missing" in c.get("/experiment/e0002/0/torn").text
    )
    fresh = c.get("/run/0/just-started")
    assert fresh.status_code == 200 and "no experiment decided yet" in fresh.text
    assert "trace.jsonl is missing" in fresh.text
    assert c.get("/").status_code == 200


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/run/0/nothing-here", 404),
        ("/run/7/run-a", 403),
        ("/experiment/e9999/0/run-a", 404),
        ("/mechanism/nope@123/0/run-a", 404),
        ("/ablation/0/run-a", 404),
        ("/run/0/ablation-real", 404),
        ("/compare?a=0/run-a", 404),
        ("/no/such/page", 404),
    ],
)
def test_bad_paths_give_an_error_page_not_a_traceback(client: TestClient, url: str, status: int) -> None:
    page = client.get(url)
    assert page.status_code == status
    assert "<h1>" in page.text and "Traceback" not in page.text and 'File "' not in page.text


TRAVERSALS = [
    "/run/0/../secret.txt",
    "/run/0/%2e%2e/secret.txt",
    "/run/0/%2E%2E%2Fsecret.txt",
    "/run/0/..%2fsecret.txt",
    "/run/0/%252e%252e/secret.txt",
    "/run//etc/passwd",
    "/run/0//etc/passwd",
    "/run/%2Fetc%2Fpasswd",
    "/run/0/run-a/..%5c..%5csecret.txt",
    "/file/0/../secret.txt",
    "/file/0/%2e%2e/secret.txt/report/x.png",
    "/file/0/ablation-real/report/..%2f..%2f..%2fsecret.txt",
    "/experiment/..%2f..%2fsecret.txt/0/run-a",
    "/mechanism/..%2F..%2Fsecret.txt/0/run-a",
    "/experiment/e0001/0/run-a/../../secret.txt",
    "/events?k=0/../secret.txt",
    "/static/..%2f..%2ffolders.py",
    "/static/../../secret.txt",
]


def raw_get(base: str, path: str) -> tuple[int, str]:
    """A request sent as written: no client-side normalisation of `..` or of percent-escapes."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, body


def test_traversal_is_refused(root: Path) -> None:
    link_dir = root / "run-a" / "experiments" / "e0001"
    (link_dir / "log.txt").symlink_to(root.parent / "secret.txt")  # a file link pointing out of the folder
    (root / "escape").symlink_to(root.parent, target_is_directory=True)  # a folder link pointing out
    (root / "run-a" / "mechanisms" / "leak").symlink_to(root.parent, target_is_directory=True)
    (root / "ablation-real" / "report" / "leak.png").symlink_to(root.parent / "secret.txt")
    try:
        with serve([root]) as base:
            extra = ["/run/0/escape", "/experiment/e0001/0/run-a", "/run/0/escape/runs/run-a"]
            for path in [*TRAVERSALS, *extra, "/file/0/ablation-real/report/leak.png"]:
                status, body = raw_get(base, path)
                assert SECRET not in body, path
                assert "Traceback" not in body, path
                assert status in (200, 400, 403, 404), (path, status)
            status, body = raw_get(base, "/experiment/e0001/0/run-a")
            assert status == 200 and "resolves outside the served folder" in body
            assert raw_get(base, "/run/0/escape")[0] == 403
            assert raw_get(base, "/run/0/%2e%2e/secret.txt")[0] == 403
            assert raw_get(base, "/file/0/ablation-real/report/leak.png")[0] == 403
    finally:
        (root / "ablation-real" / "report" / "leak.png").unlink()
        (link_dir / "log.txt").unlink()
        (root / "escape").unlink()
        (root / "run-a" / "mechanisms" / "leak").unlink()


def test_folder_refuses_what_resolves_outside(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    (tmp_path / "outside.txt").write_text(SECRET)
    (tmp_path / "served" / "link").symlink_to(tmp_path / "outside.txt")
    served = Served.of([tmp_path / "served"])
    root = served.root(0)
    for bad in ("..", ".", "", "a/b", "a\\b", "x\0y"):
        with pytest.raises(Refused):
            root.resolve(bad)
    with pytest.raises(Refused):
        root.read_text("link")
    assert root.names() == []  # the link is not listed either
    for key in ("1", "x", "0/..", "0//etc", "-1", "/etc/passwd"):
        with pytest.raises(Refused):
            served.folder(key)
    assert folders.kind_of(root) is None


def test_dashboard_writes_nothing(root: Path, client: TestClient) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if not p.is_symlink()}

    before = snapshot()
    for url in ("/", "/run/0/run-a", "/llm/0/run-a", "/ablation/0/ablation-real", "/experiment/e0001/0/run-a"):
        assert client.get(url).status_code == 200
    assert client.post("/run/0/run-a").status_code == 405
    assert snapshot() == before


def test_live_update_event_and_fragment(tmp_path: Path, root: Path) -> None:
    run = tmp_path / "runs" / "live"
    shutil.copytree(root / "run-a", run)
    with serve([tmp_path / "runs"]) as base:
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=15)
        conn.request("GET", "/events?k=0/live")
        stream = conn.getresponse()
        assert stream.status == 200 and stream.getheader("content-type").startswith("text/event-stream")
        assert stream.readline().startswith(b"retry:")
        stream.readline()
        time.sleep(0.2)
        eid = append_experiment(run, 1.5)
        started = time.monotonic()
        line = stream.readline()
        assert line == b"event: change\n", line
        assert time.monotonic() - started < 5
        conn.close()
        status, fragment = raw_get(base, "/run/0/live?part=main")
        assert status == 200 and f'data-id="{eid}"' in fragment and "<html" not in fragment


def test_an_experiment_in_flight_is_shown_as_such(tmp_path: Path, root: Path) -> None:
    run = tmp_path / "runs" / "training"
    shutil.copytree(root / "run-a", run)
    n = sum(e["kind"] == "experiment" for e in events(run))
    eid = f"e{n:04d}"
    with open(run / "trace.jsonl", "a") as f:  # proposed and handed to the trainer, not decided yet
        f.write(
            json.dumps({"kind": "propose", "experiment": eid, "iteration": n, "source": "llm", "changes": {"DEPTH": 6}})
        )
        f.write("\n" + json.dumps({"kind": "train_start", "experiment": eid}) + "\n")
    c = TestClient(create_app(Served.of([tmp_path / "runs"])), base_url="http://127.0.0.1")
    page = c.get("/run/0/training").text
    assert f'<tr data-status="running" data-source="llm" data-id="{eid}" class="pending-row">' in page
    assert '<span class="pill running">training</span>' in page and "DEPTH=6" in page
    assert f"<title>{eid}: training</title>" in page  # the dashed line of the staircase
    assert "1 in flight" in page and c.get(f"/experiment/{eid}/0/training").status_code == 200


def test_a_run_of_the_inner_loop_alone(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "inner", iterations=3, level="1", mechanism=None, inner_only=True)
    c = TestClient(create_app(Served.of([tmp_path / "runs"])), base_url="http://127.0.0.1")
    page = c.get("/run/0/inner").text
    assert re.search(
        r'class="badge"[^>]*>llm_greedy@\w+ · 3 calls · segments —<', page
    )  # no segments, still its mechanism
    assert "not run by this run: the inner loop ran alone" in page
    assert re.findall(r'<a href="/experiment/(e\d{4})/0/inner" data-id=', page) == ["e0000", "e0001", "e0002", "e0003"]


def test_a_run_where_everything_crashed(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "crashed"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"level": "1", "iterations": 2}))
    crash = {"kind": "experiment", "status": "crash", "val_bpb": None, "error": "exit 1", "proposal_source": "llm"}
    lines = [{**crash, "id": f"e{i:04d}", "iteration": i, "time": 1.0 + i} for i in range(3)]
    (run / "trace.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    c = TestClient(create_app(Served.of([tmp_path / "runs"])), base_url="http://127.0.0.1")
    page = c.get("/run/0/crashed")
    assert page.status_code == 200
    assert page.text.count('class="pt st-crash src-llm"') == 3 and "not finished" in page.text
    assert c.get("/experiment/e0001/0/crashed").status_code == 200
    assert c.get("/").status_code == 200


def test_events_of_the_wrong_shape_do_not_break_a_page(tmp_path: Path, root: Path) -> None:
    """A trace edited by hand or written by another version: fields of the wrong type are shown or skipped."""
    run = tmp_path / "runs" / "odd"
    shutil.copytree(root / "run-a", run)
    odd = [
        {"kind": "experiment", "id": "e0090", "iteration": "ninety", "status": 5, "val_bpb": "low", "changes": [1]},
        {"kind": "experiment", "id": 7, "iteration": 1},
        {"kind": "segment_start", "cycle": [1], "first": "a", "mechanism": 5},
        {"kind": "segment_end", "cycle": 99, "first": 2, "last": "z", "mechanism": "m@1", "progress": "much"},
        {
            "kind": "mechanism_call",
            "mechanism": "m@1",
            "ok": "yes",
            "llm_asks": "many",
            "seconds": "long",
            "iteration": {},
        },
        {"kind": "llm_call", "node": None, "latency_s": "slow", "prompt_tokens": "x", "ok": False, "error": {"a": 1}},
        {"kind": "compare", "mechanism": "m@1", "event": "kept", "segment": {"last": "end"}},
        {"kind": "inject", "mechanism": "m@1", "injected": True, "replaces": ["x"]},
        {"kind": "analyze", "diagnosis": "not a dict"},
        {"kind": "propose", "experiment": "e0091", "iteration": None, "changes": "DEPTH"},
        {"kind": "run_end", "time": "later"},
    ]
    with open(run / "trace.jsonl", "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in odd))
    c = TestClient(create_app(Served.of([tmp_path / "runs"])), base_url="http://127.0.0.1")
    for url in ("/", "/run/0/odd", "/llm/0/odd", "/mechanism/m@1/0/odd", "/experiment/e0090/0/odd",
                "/experiment/e0091/0/odd", "/experiment/e0001/0/odd", "/compare?a=0/odd&b=0/odd"):  # fmt: skip
        page = c.get(url)
        assert page.status_code == 200, (url, page.text[-600:])


def test_svg_ticks_and_trace_parsing() -> None:
    assert ticks(2.0, 2.1, 5) == pytest.approx([2.0, 2.025, 2.05, 2.075, 2.1])
    assert ticks(0.0, 10.0, 5) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert [tick_label(v, [0.0, 0.025]) for v in (0.0, 0.025)] == ["0.000", "0.025"]
    assert ticks(-0.1, 0.0, 4)[-1] == 0.0 and tick_label(0.0, [-0.05, 0.0]) == "0.00"
    trace = parse('{"kind": "a"}\n[1, 2]\n{"kind": "b"}\n{"kind": "c", "x": ')
    assert [e["kind"] for e in trace.events] == ["a", "b"] and trace.skipped == 2 and trace.torn_tail


def test_cli_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(os.environ, "NO_PROXY", "127.0.0.1,localhost")
