"""The served folders and the only way the dashboard reads a file: every path is resolved (symlinks followed) and
refused unless it lands inside the served folder it was asked under.

A *key* names a folder in URLs: `<root index>/<path relative to that root>` (`0/20261129-101500-level2`), or
`<root index>` for a served folder itself. A key part may not be empty, `.`, `..`, or hold a slash, a backslash or
a NUL: what a browser or a hand-made URL decodes to `..` is refused before any file is touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_READ_BYTES = 64 * 1024 * 1024  # a trace of a long run stays far below this; a bigger file is refused, not read
RUN_MARKERS = ("run.json", "trace.jsonl")
ABLATION_MARKER = "ablation.json"  # ablation.harness.MANIFEST, named here so reading a folder imports no harness


class Refused(Exception):
    """A path that is malformed or resolves outside the served folders."""


class Unreadable(Exception):
    """A file that exists but cannot be used: not valid JSON, too large, not text."""


def check_part(part: str) -> str:
    if part in ("", ".", "..") or any(c in part for c in "/\\\0"):
        raise Refused(f"refused path component {part!r}")
    return part


@dataclass(frozen=True)
class Folder:
    """A folder inside a served root; every read below it is checked to stay inside the root."""

    root: Path  # the served folder, resolved
    path: Path  # this folder, resolved, inside root
    key: str

    @property
    def name(self) -> str:
        return self.path.name

    def resolve(self, *parts: str) -> Path:
        """The resolved path of `parts` below this folder; Refused if it lands outside the root."""
        target = self.path.joinpath(*(check_part(p) for p in parts)).resolve()
        if not target.is_relative_to(self.root):
            raise Refused(f"{'/'.join(parts)} resolves outside the served folder")
        return target

    def sub(self, *parts: str) -> Folder:
        target = self.resolve(*parts)
        if not target.is_dir():
            raise FileNotFoundError(f"{self.key}/{'/'.join(parts)} is not a folder")
        return Folder(self.root, target, key_of(self.key, *parts))

    def exists(self, *parts: str) -> bool:
        try:
            return self.resolve(*parts).exists()
        except Refused:
            return False

    def is_file(self, *parts: str) -> bool:
        try:
            return self.resolve(*parts).is_file()
        except Refused:
            return False

    def read_bytes(self, *parts: str, limit: int = MAX_READ_BYTES) -> bytes:
        path = self.resolve(*parts)
        if not path.is_file():
            raise FileNotFoundError(f"{'/'.join(parts)} is missing")
        if path.stat().st_size > limit:
            raise Unreadable(f"{'/'.join(parts)} is larger than {limit} bytes")
        return path.read_bytes()

    def read_text(self, *parts: str, limit: int = MAX_READ_BYTES) -> str:
        return self.read_bytes(*parts, limit=limit).decode("utf-8", errors="replace")

    def read_json(self, *parts: str) -> Any:
        text = self.read_text(*parts)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise Unreadable(f"{'/'.join(parts)} is not valid JSON ({e.msg}, line {e.lineno})") from None

    def tail(self, *parts: str, lines: int = 60, window: int = 64 * 1024) -> str:
        """The last `lines` lines of a text file, reading at most `window` bytes from its end."""
        path = self.resolve(*parts)
        if not path.is_file():
            raise FileNotFoundError(f"{'/'.join(parts)} is missing")
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - window))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def names(self, *parts: str) -> list[str]:
        """The entries of a subfolder (sorted) that stay inside the root; [] when it is missing."""
        try:
            folder = self.resolve(*parts)
        except Refused:
            return []
        if not folder.is_dir():
            return []
        inside = []
        for name in sorted(os.listdir(folder)):
            if (folder / name).resolve().is_relative_to(self.root):
                inside.append(name)
        return inside

    def signature(self, *names: str) -> tuple[Any, ...]:
        """What changes when a writer touches these files or this folder's listing: sizes and mtimes."""
        out: list[Any] = []
        for name in names:
            try:
                st = self.resolve(*name.split("/")).stat()
                out.append((name, st.st_size, st.st_mtime_ns))
            except (OSError, Refused):
                out.append((name, None))
        return tuple(out)


def key_of(key: str, *parts: str) -> str:
    return "/".join([key, *parts])


def kind_of(folder: Folder) -> str | None:
    """ "run", "ablation" or None, from the files a run or an ablation writes first."""
    if folder.is_file(ABLATION_MARKER):
        return "ablation"
    if any(folder.is_file(m) for m in RUN_MARKERS):
        return "run"
    return None


@dataclass(frozen=True)
class Served:
    """The folders given on the command line, resolved once."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, paths: list[Path]) -> Served:
        roots = []
        for p in paths:
            resolved = Path(p).expanduser().resolve()
            if not resolved.is_dir():
                raise FileNotFoundError(f"{p} is not a folder")
            roots.append(resolved)
        return cls(tuple(roots))

    def root(self, index: int) -> Folder:
        return Folder(self.roots[index], self.roots[index], str(index))

    def folder(self, key: str) -> Folder:
        """The folder a key names; Refused for a malformed key or one that leaves its root, FileNotFoundError for
        one that names nothing."""
        head, _, rest = key.strip("/").partition("/")
        if not head.isdigit() or int(head) >= len(self.roots):
            raise Refused(f"no served folder numbered {head!r}")
        root = self.root(int(head))
        return root.sub(*rest.split("/")) if rest else root

    def discover(self, depth: int = 2) -> list[tuple[str, Folder]]:
        """(kind, folder) of every run and ablation within `depth` levels of each root, newest name first; an
        ablation's own runs are reached through the ablation, not listed here."""
        found: list[tuple[str, Folder]] = []
        for i in range(len(self.roots)):
            found += _walk(self.root(i), depth)
        return found

    def discover_under(self, folder: Folder, depth: int = 2) -> list[tuple[str, Folder]]:
        return _walk(folder, depth)


def _walk(folder: Folder, depth: int) -> list[tuple[str, Folder]]:
    kind = kind_of(folder)
    if kind:
        return [(kind, folder)]
    if depth == 0:
        return []
    found: list[tuple[str, Folder]] = []
    for name in reversed(folder.names()):
        if name.startswith("."):
            continue
        try:
            child = folder.sub(name)
        except (FileNotFoundError, Refused):
            continue
        found += _walk(child, depth - 1)
    return found
