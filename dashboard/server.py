"""The dashboard's web app (Starlette): read-only GET routes over the served folders, a server-sent event stream
that says when a watched folder changed, and its own static files. Errors become a page that says what went wrong,
never a stack trace; every response forbids the browser to load anything from anywhere but this server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from anyio import to_thread
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from dashboard import views
from dashboard.folders import Folder, Refused, Served, Unreadable, kind_of
from dashboard.highlight import highlight, stylesheet
from dashboard.templating import filters
from dashboard.watch import signature

log = logging.getLogger("dashboard")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
EVENT_POLL_S = 1.0
EVENT_STREAM_S = 600.0  # a stream ends after this; the browser's EventSource reconnects by itself
MAIN_START, MAIN_END = "<!--main-->", "<!--/main-->"
PageBuilder = Callable[[Request], dict[str, Any]]


def environment() -> Environment:
    env = Environment(loader=PackageLoader("dashboard", "templates"), autoescape=select_autoescape(["html"]))
    env.filters.update(filters())
    env.globals.update(highlight=highlight, url=views.run_url)
    return env


def create_app(served: Served, *, allowed_hosts: list[str] | None = None) -> Starlette:
    env = environment()

    def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return render("error.html", status, title=title, message=message, path=request.url.path, watch=[])

    def page(template: str, build: PageBuilder) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                context = await to_thread.run_sync(build, request)
            except Refused as e:
                return error(request, 403, "Refused", f"{e}. The dashboard reads only inside the folders it serves.")
            except (FileNotFoundError, views.NotFound) as e:
                return error(request, 404, "Not found", str(e) or "nothing here")
            except Unreadable as e:
                return error(request, 422, "Unreadable", str(e))
            response = render(template, **context)
            if request.query_params.get("part") == "main":  # what a live update swaps in
                html = bytes(response.body).decode()
                body = html[html.index(MAIN_START) + len(MAIN_START) : html.rindex(MAIN_END)]
                return HTMLResponse(body, headers=HEADERS)
            return response

        return endpoint

    def key(request: Request) -> str:
        return str(request.path_params["key"])

    async def events(request: Request) -> Response:
        keys = request.query_params.getlist("k")[:8]
        try:
            for k in keys:
                served.folder(k)  # a bad key is refused before anything streams
        except Refused as e:
            return error(request, 403, "Refused", str(e))
        except FileNotFoundError as e:
            return error(request, 404, "Not found", str(e))

        async def stream() -> AsyncIterator[str]:
            last = await to_thread.run_sync(lambda: [signature(served, k) for k in keys])
            yield "retry: 2000\n\n"
            started = heartbeat = time.monotonic()
            while time.monotonic() - started < EVENT_STREAM_S:
                await asyncio.sleep(EVENT_POLL_S)
                if await request.is_disconnected():
                    return
                now = await to_thread.run_sync(lambda: [signature(served, k) for k in keys])
                if now != last:
                    last = now
                    yield f"event: change\ndata: {time.time():.3f}\n\n"
                elif time.monotonic() - heartbeat > 15:
                    heartbeat = time.monotonic()
                    yield ": still watching\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "pygments.css":
            return Response(stylesheet(), media_type="text/css", headers={**HEADERS, "Cache-Control": "max-age=300"})
        if name not in STATIC:
            return error(request, 404, "Not found", f"no static file {name!r}")
        text = resources.files("dashboard").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=STATIC[name], headers={**HEADERS, "Cache-Control": "max-age=300"})

    async def figure(request: Request) -> Response:
        """A PNG figure of an ablation's report (report/*.png), nothing else."""
        parts = key(request).rsplit("/", 2)
        if len(parts) != 3 or parts[1] != "report" or not parts[2].endswith(".png"):
            return error(request, 404, "Not found", "only an ablation report's PNG figures are served as files")
        try:
            folder: Folder = served.folder(parts[0])
            if kind_of(folder) != "ablation":
                raise FileNotFoundError(f"{parts[0]} is not an ablation folder")
            data = await to_thread.run_sync(lambda: folder.read_bytes("report", parts[2], limit=16 * 1024 * 1024))
        except Refused as e:
            return error(request, 403, "Refused", str(e))
        except (FileNotFoundError, Unreadable) as e:
            return error(request, 404, "Not found", str(e))
        return Response(data, media_type="image/png", headers=HEADERS)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        return error(request, status, "Not found" if status == 404 else f"Error {status}", "no such page")

    async def failed(request: Request, exc: Exception) -> Response:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return error(request, 500, "Could not show this page", f"{type(exc).__name__}: {exc}")

    routes = [
        Route("/", page("index.html", lambda r: views.index(served))),
        Route("/run/{key:path}", page("run.html", lambda r: views.run_page(served, key(r)))),
        Route(
            "/experiment/{item}/{key:path}",
            page("experiment.html", lambda r: views.experiment_page(served, key(r), r.path_params["item"])),
        ),
        Route(
            "/mechanism/{item}/{key:path}",
            page("mechanism.html", lambda r: views.mechanism_page(served, key(r), r.path_params["item"])),
        ),
        Route("/llm/{key:path}", page("llm.html", lambda r: views.llm_page(served, key(r)))),
        Route("/ablation/{key:path}", page("ablation.html", lambda r: views.ablation_page(served, key(r)))),
        Route("/compare", page("compare.html", lambda r: views.compare_page(served, compare_keys(r)))),
        Route("/events", events),
        Route("/static/{name}", static),
        Route("/file/{key:path}", figure),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={404: not_found, 405: not_found, Exception: failed},
    )


def compare_keys(request: Request) -> list[str]:
    keys = [request.query_params.get("a", ""), request.query_params.get("b", "")]
    if not all(keys):
        raise views.NotFound("choose two runs to compare (a=RUN&b=RUN)")
    return keys
