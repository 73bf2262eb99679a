"""The dashboard in a real headless Chromium (Debian's, driven by Playwright; scripts/setup.sh installs both): the
pages render their graphs, charts and tables; a run that writes new experiments shows them within seconds without
a reload; no request leaves 127.0.0.1; traversal attempts are refused.

DASHBOARD_SCREENSHOTS=docs/dashboard pytest tests/test_dashboard_browser.py -m slow  also writes the screenshots
that the README and docs/dashboard.md show."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dashboard_support import append_experiment, events, serve, served_runs

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SECRET = "secret-outside-the-dashboard"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_runs(tmp_path_factory.mktemp("browser"), SECRET)


@pytest.fixture(scope="module")
def base_url(runs: Path) -> Iterator[str]:
    with serve([runs]) as url:
        yield url


class Browser:
    """A Chromium page that records every request it makes and refuses any that is not for 127.0.0.1."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.requests: list[str] = []
        self.errors: list[str] = []  # script errors and console errors (a refused Content-Security-Policy among them)
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        context.on("request", lambda request: self.requests.append(request.url))
        context.route("**/*", self._only_local)

    @staticmethod
    def _only_local(route: Any) -> None:
        url = urlsplit(route.request.url)
        if url.scheme == "data" or url.hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    def elsewhere(self) -> list[str]:
        return [u for u in self.requests if not (u.startswith("data:") or urlsplit(u).hostname == "127.0.0.1")]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: scripts/setup.sh installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            yield Browser(context)
        finally:
            context.close()


def not_blank(png: bytes) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, "a screenshot of a few flat colours"
    background = max(colours)[0] / (image.width * image.height)
    assert background < 0.9, f"{background:.0%} of the screenshot is one colour"


def shoot(browser: Browser, name: str | None, until: str | None = None) -> bytes:
    """A full-page screenshot (down to the end of `until`); with DASHBOARD_SCREENSHOTS set, also written there as a
    256-colour PNG."""
    box = browser.page.locator(until).bounding_box() if until else None
    clip = {"x": 0, "y": 0, "width": 1360, "height": box["y"] + box["height"] + 12} if box else None
    png: bytes = browser.page.screenshot(full_page=True, clip=clip)  # type: ignore[arg-type]
    folder = os.environ.get("DASHBOARD_SCREENSHOTS")
    if folder and name:
        from PIL import Image

        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(
            Path(folder) / f"{name}.png", optimize=True
        )
    return png


def test_pages_render_graphs_charts_and_tables(browser: Browser, base_url: str, runs: Path) -> None:
    page = browser.page
    records = [e for e in events(runs / "run-a") if e["kind"] == "experiment"]
    page.goto(base_url + "/")
    assert page.locator("#runs-table tbody tr").count() >= 1
    assert page.locator("#ablations-table tbody tr").count() == 1

    page.goto(base_url + "/run/0/run-a")
    page.wait_for_selector("#live-state.on")  # the event stream is connected
    badge = page.locator('svg.graph-inner g[data-node="propose"].badged text.badge').text_content() or ""
    assert " calls · segments " in badge
    assert page.locator("svg.graph-outer g.node").count() == 9
    assert page.locator("#staircase a[data-id]").count() == len(records)
    assert page.locator("#staircase polyline.best").count() == 1
    assert page.locator("#experiments-table tbody tr").count() == len(records)
    not_blank(shoot(browser, None))

    # sorting and filtering happen in the page
    page.locator("#experiments-table th", has_text="val_bpb").click()
    page.locator("#experiments-table th", has_text="val_bpb").click()
    values = [v for v in page.locator("#experiments-table tbody tr td:nth-child(4)").all_inner_texts() if v != "—"]
    assert values == sorted(values, reverse=True)
    page.select_option('select[data-filter-attr="status"]', "keep")
    visible = page.locator("#experiments-table tbody tr:not([hidden])")
    assert visible.count() == sum(r["status"] == "keep" for r in records)

    page.locator("#experiments-table tbody tr:not([hidden]) a").last.click()
    page.wait_for_selector("#diff .hl")
    assert page.locator("#exchange li").count() >= 1
    not_blank(shoot(browser, "experiment"))

    start = next(e["mechanism"] for e in events(runs / "run-a") if e["kind"] == "segment_start")
    page.goto(f"{base_url}/mechanism/{start}/0/run-a")
    assert page.locator("#source .hl").count() == 1 and page.locator("#proposed tbody tr").count() >= 1
    shoot(browser, "mechanism")

    page.goto(base_url + "/llm/0/run-a")
    assert page.locator("svg.latency .call").count() == sum(e["kind"] == "llm_call" for e in events(runs / "run-a"))
    page.goto(base_url + "/llm/0/ablation-real/runs/C-r01")  # a real run: the embedded model's tokens and latency
    assert page.locator("#llm-nodes tbody tr").count() >= 3
    shoot(browser, "llm-calls", until="#latency")

    page.goto(base_url + "/ablation/0/ablation-real")
    assert page.locator("#groups-table tbody tr").count() == 3
    assert page.locator("svg.forest rect.mean").count() == 3
    not_blank(shoot(browser, "ablation"))

    page.goto(base_url + "/run/0/ablation-real/runs/C-r01")
    page.wait_for_selector("#staircase svg")
    not_blank(shoot(browser, "run", until="#progress"))
    shoot(browser, "run-full")

    page.goto(base_url + "/compare?a=0/ablation-real/runs/A-r01&b=0/ablation-real/runs/C-r01")
    assert page.locator(".side svg.staircase").count() == 2
    shoot(browser, "compare")
    assert browser.elsewhere() == []
    assert browser.errors == []
    assert any(u.startswith(base_url + "/static/") for u in browser.requests)


def test_new_experiments_appear_without_a_reload(browser: Browser, tmp_path: Path, runs: Path) -> None:
    live = tmp_path / "runs" / "live"
    shutil.copytree(runs / "run-a", live)
    with serve([tmp_path / "runs"]) as base:
        page = browser.page
        page.goto(base + "/run/0/live")
        page.wait_for_selector("#live-state.on")
        page.evaluate("window.__notReloaded = 42")
        rows = page.locator("#experiments-table tbody tr").count()
        page.fill('input[data-filter-for="experiments-table"]', "e0")  # a filter the update must keep
        started = time.monotonic()
        eid = append_experiment(live, 1.2)
        page.wait_for_selector(f'#experiments-table tr[data-id="{eid}"]', timeout=10_000)
        seen_after = time.monotonic() - started
        assert seen_after < 8, f"the new experiment took {seen_after:.1f} s to show"
        assert page.evaluate("window.__notReloaded") == 42
        assert page.locator("#experiments-table tbody tr").count() == rows + 1
        assert page.locator(f'#staircase a[data-id="{eid}"]').count() == 1
        assert page.input_value('input[data-filter-for="experiments-table"]') == "e0"
        second = append_experiment(live, 1.1)
        page.wait_for_selector(f'#experiments-table tr[data-id="{second}"]', timeout=10_000)
        assert int(page.evaluate("document.body.dataset.refreshed")) >= 2
        assert browser.elsewhere() == []
        assert browser.errors == []


def test_traversal_is_refused_in_the_browser(browser: Browser, base_url: str) -> None:
    page = browser.page
    for path in (
        "/run/0/%2e%2e/secret.txt",
        "/run/0/..%2fsecret.txt",
        "/file/0/%2e%2e%2fsecret.txt",
        "/experiment/..%2f..%2fsecret.txt/0/run-a",
        "/run/0/../secret.txt",
        "/run//tmp",
    ):
        response = page.goto(base_url + path)
        assert response is not None and response.status in (403, 404), path
        text = page.content()
        assert SECRET not in text and "Traceback" not in text
        assert page.locator("section.error-page h1").count() == 1
    assert browser.elsewhere() == []
