"""Building a candidate train.py: constants rewritten through the AST, code-mode edits applied under a guard."""

from __future__ import annotations

import ast
import difflib
from collections import Counter
from typing import Any

BLOCK_START = "# ---- hyperparameters: the inner loop edits this block ----"
BLOCK_END = "# ---- end of hyperparameters ----"

# Names a code edit may not introduce: they reach outside the experiment (files, processes, the network, secrets).
FORBIDDEN_NAMES = frozenset(
    {
        "open",
        "exec",
        "eval",
        "compile",
        "__import__",
        "importlib",
        "subprocess",
        "socket",
        "os",
        "sys",
        "shutil",
        "pathlib",
        "Path",
        "environ",
        "getattr",
        "setattr",
        "globals",
        "locals",
        "builtins",
        "pickle",
        "marshal",
        "ctypes",
    }
)


class EditError(ValueError):
    """A code edit or constant change that cannot be applied; the message says why."""


def block_lines(source: str) -> tuple[int, int]:
    """1-based line numbers of the block's start and end markers."""
    lines = source.splitlines()
    try:
        start = next(i for i, line in enumerate(lines, 1) if line.strip() == BLOCK_START)
        end = next(i for i, line in enumerate(lines, 1) if line.strip() == BLOCK_END and i > start)
    except StopIteration:
        raise EditError("train.py has no hyperparameter block (its start and end markers are missing)") from None
    return start, end


def rewrite_constants(source: str, values: dict[str, Any]) -> str:
    """Return `source` with the block's constants set to `values`, each value's source span replaced in place."""
    start, end = block_lines(source)
    spans: dict[str, ast.expr] = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and start < node.lineno < end
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            spans[node.targets[0].id] = node.value
    missing = sorted(set(values) - set(spans))
    if missing:
        raise EditError(f"not constants of the hyperparameter block: {', '.join(missing)}")
    lines = source.splitlines(keepends=True)
    for name in sorted(values, key=lambda n: spans[n].lineno, reverse=True):
        value = spans[name]
        if value.lineno != value.end_lineno:
            raise EditError(f"{name}: a constant must fit on one line")
        line = lines[value.lineno - 1]
        encoded = line.encode()
        new = encoded[: value.col_offset] + repr(values[name]).encode() + encoded[value.end_col_offset :]
        lines[value.lineno - 1] = new.decode()
    return "".join(lines)


def _locked_names(tree: ast.Module) -> set[str]:
    """Names bound by imports from the locked gpt modules (budget, evaluation, reporting, data)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt"):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("gpt"))
    return names


def _locked_statements(tree: ast.Module) -> Counter[str]:
    """Every statement that imports or uses a locked name, as AST dumps (line numbers ignored)."""
    locked = _locked_names(tree)
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or isinstance(
            node, ast.FunctionDef | ast.ClassDef | ast.If | ast.For | ast.While | ast.With | ast.Try
        ):
            continue
        uses = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        is_import = isinstance(node, ast.Import | ast.ImportFrom) and _locked_names(ast.Module([node], [])) != set()
        if is_import or uses & locked:
            found[ast.dump(node)] += 1
    return found


def apply_edits(source: str, edits: list[dict[str, str]]) -> str:
    """Apply search/replace edits to a copy of train.py, refusing any that touches the locked parts."""
    if not edits:
        raise EditError("no edits given")
    new = source
    for i, edit in enumerate(edits, 1):
        search, replace = edit.get("search", ""), edit.get("replace", "")
        if not search:
            raise EditError(f"edit {i}: empty search text")
        count = new.count(search)
        if count != 1:
            raise EditError(f"edit {i}: the search text occurs {count} times in train.py (it must occur once)")
        introduced = {n.id for n in _names(replace)} - {n.id for n in _names(search)}
        bad = sorted(introduced & FORBIDDEN_NAMES)
        if bad:
            raise EditError(f"edit {i}: may not introduce {', '.join(bad)} (no files, processes, network or secrets)")
        new = new.replace(search, replace)
    try:
        new_tree = ast.parse(new)
    except SyntaxError as e:
        raise EditError(f"the edited train.py does not parse: {e.msg} (line {e.lineno})") from None
    old_tree = ast.parse(source)
    if _locked_statements(new_tree) != _locked_statements(old_tree) or _locked_names(new_tree) != _locked_names(
        old_tree
    ):
        raise EditError("the edit changes the locked evaluation, data split, time budget or result reporting")
    if BLOCK_START not in new or BLOCK_END not in new:
        raise EditError("the edit removes a marker of the hyperparameter block")
    return new


def _names(text: str) -> list[ast.Name]:
    """Names in a code fragment; a fragment that does not parse on its own contributes its bare words."""
    try:
        return [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)]
    except SyntaxError:
        words = "".join(c if c.isalnum() or c == "_" else " " for c in text).split()
        return [ast.Name(id=w) for w in words]


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_name, new_name))
