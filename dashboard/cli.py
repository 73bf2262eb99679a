"""`python -m graphs.bilevel dashboard [RUN_OR_ABLATION_FOLDER ...]`: serve the dashboard on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path


def main_dashboard(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m graphs.bilevel dashboard",
        description="A read-only web dashboard of run and ablation folders; it follows them while runs write.",
    )
    ap.add_argument(
        "folders", nargs="*", type=Path, help="run folders, ablation folders or folders of them (default runs/)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)

    import uvicorn

    from dashboard import graph_svg
    from dashboard.folders import Served
    from dashboard.server import create_app

    folders = args.folders or [Path("runs")]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)} (runs are written to runs/ by python -m graphs.bilevel)")
        return 2
    served = Served.of(folders)
    graph_svg.topologies()  # build both graphs once now rather than on the first page
    local = args.host in ("127.0.0.1", "localhost", "::1")
    app = create_app(served, allowed_hosts=None if local else ["*"])  # the Host header is checked on this machine
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"dashboard of {', '.join(str(r) for r in served.roots)} at http://{shown}:{args.port}/  (Ctrl-C stops it)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0
