"""Building a candidate train.py: constants rewritten by the block's grammar (gpt/constants.py), code-mode edits applied
under a guard."""

from __future__ import annotations

import ast
import difflib
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gpt import constants

# What a code edit may not add to train.py (counted on the whole edited file, so a search text cannot smuggle a name
# in). The training process runs the edited file with full Python, so this guard refuses the direct forms of
# reaching outside the experiment or tampering with the locked evaluation; `docs/reliability.md` lists what it leaves.
FORBIDDEN_NAMES = frozenset(  # as a name, an attribute or an import: files, processes, network, secrets
    {
        "os", "sys", "subprocess", "socket", "shutil", "pathlib", "Path", "importlib", "builtins", "environ",
        "getenv", "putenv", "system", "popen", "spawn", "fork", "pickle", "marshal", "ctypes", "multiprocessing",
        "distributed", "urllib", "requests", "http", "load", "save", "hub", "from_file", "cpp_extension",
        "load_inline", "load_library", "pty", "signal", "resource", "threading", "tempfile", "io", "gc", "inspect",
    }
)  # fmt: skip
FORBIDDEN_CALLS = frozenset(  # as a bare name only (torch.compile stays allowed)
    {"open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "vars", "globals", "locals",
     "breakpoint", "input", "memoryview"}
)  # fmt: skip
ALLOWED_IMPORTS = frozenset(  # modules a new import may name (the ones train.py already imports stay as they are)
    {"math", "cmath", "random", "functools", "itertools", "collections", "dataclasses", "typing", "contextlib",
     "enum", "abc", "numbers", "statistics", "heapq", "bisect", "copy", "warnings", "torch"}
)  # fmt: skip
ALLOWED_DUNDERS = frozenset({"__init__"})
ALLOWED_PRIVATE = frozenset({"_dynamo", "_inductor"})  # torch's compiler settings
# Attribute targets under these may be assigned (performance switches); any other module attribute may not.
SETTABLE_MODULE_ATTRIBUTES = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.")


class EditError(ValueError):
    """A code edit or constant change that cannot be applied; the message says why."""


def rewrite_constants(source: str, values: Mapping[str, Any]) -> str:
    """Return `source` with the block's constants set to `values`, each changed value's text replaced in place."""
    try:
        return constants.rewrite(source, values)
    except constants.BlockError as e:
        raise EditError(str(e)) from None


def _locked_names(tree: ast.Module) -> set[str]:
    """Names bound by imports from the locked gpt modules (budget, evaluation, reporting, data)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt"):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("gpt"))
    return names


def _uses(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _root(node: ast.AST) -> str | None:
    """The name an attribute / call / subscript chain starts from: `run` for `run.data.batches(...)`."""
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _tainted_names(tree: ast.Module) -> set[str]:
    """The locked names and the names that hold a part of them: a parameter annotated with a locked type
    (`run: runtime.Run`) and a variable taken from one (`clock = run.clock`, `batches = run.data.batches(...)`).
    Statements that use these names are the budget clock, the data split, evaluation and reporting."""
    tainted = _locked_names(tree)
    while True:
        before = len(tainted)
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.annotation is not None and _root(node.annotation) in tainted:
                tainted.add(node.arg)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                if _root(node.value) in tainted:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    tainted.update(n for t in targets for n in _uses(t))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                if _root(node.context_expr) in tainted:
                    tainted.update(_uses(node.optional_vars))
        if len(tainted) == before:
            return tainted


def _headers(node: ast.stmt) -> list[ast.AST]:
    """The parts of a compound statement that decide what runs (a loop's condition, a `with`'s context)."""
    if isinstance(node, ast.While | ast.If):
        return [node.test]
    if isinstance(node, ast.For):
        return [node.target, node.iter]
    if isinstance(node, ast.With):
        return [item.context_expr for item in node.items]
    return []


def _locked_statements(tree: ast.Module) -> Counter[str]:
    """Every statement, or compound statement's header, that imports or uses a locked or tainted name, as AST
    dumps (line numbers ignored): an edit must leave this multiset unchanged."""
    tainted = _tainted_names(tree)
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Try):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            if _locked_names(ast.Module([node], [])):
                found[ast.dump(node)] += 1
            continue
        headers = _headers(node)
        parts = headers if headers or isinstance(node, ast.While | ast.If | ast.For | ast.With) else [node]
        for part in parts:
            if _uses(part) & tainted:
                found[type(node).__name__ + ":" + ast.dump(part)] += 1
    return found


def apply_edits(source: str, edits: list[dict[str, str]]) -> str:
    """Apply search/replace edits to a copy of train.py, refusing any that touches the locked parts."""
    if not edits:
        raise EditError("no edits given")
    new = source
    for i, edit in enumerate(edits, 1):
        search, replace = edit.get("search", ""), edit.get("replace", "")
        if not isinstance(search, str) or not isinstance(replace, str):
            raise EditError(f"edit {i}: search and replace must be text")
        if not search:
            raise EditError(f"edit {i}: empty search text")
        count = new.count(search)
        if count != 1:
            raise EditError(f"edit {i}: the search text occurs {count} times in train.py (it must occur once)")
        new = new.replace(search, replace)
    try:
        new_tree = ast.parse(new)
    except SyntaxError as e:
        raise EditError(f"the edited train.py does not parse: {e.msg} (line {e.lineno})") from None
    old_tree = ast.parse(source)
    problem = _introduced_problem(old_tree, new_tree)
    if problem:
        raise EditError(problem)
    if _locked_statements(new_tree) != _locked_statements(old_tree) or _locked_names(new_tree) != _locked_names(
        old_tree
    ):
        raise EditError("the edit changes the locked evaluation, data split, time budget or result reporting")
    try:
        constants.parse_block(new)
    except constants.BlockError as e:  # the training would exit 2 on it
        raise EditError(f"the edited hyperparameter block breaks its grammar: {e}") from None
    return new


def _introduced_problem(old: ast.Module, new: ast.Module) -> str | None:
    """Why the names, imports or assignments the edit adds are refused, or None."""
    added = _identifiers(new) - _identifiers(old)
    bad = sorted(
        {name for kind, name in added if name in FORBIDDEN_NAMES or (kind == "name" and name in FORBIDDEN_CALLS)}
    )
    if bad:
        return f"the edit may not introduce {', '.join(bad)} (no files, processes, network or secrets)"
    dunders = sorted({name for _, name in added if _dunder(name) and name not in ALLOWED_DUNDERS})
    if dunders:
        return f"the edit may not introduce {', '.join(dunders)} (no introspection)"
    private = sorted({name for kind, name in added if kind == "private"})
    if private:
        return f"the edit may not reach private attributes {', '.join(private)} of other objects"
    imports = sorted(m for m in _imported(new) - _imported(old) if m.split(".")[0] not in ALLOWED_IMPORTS)
    if imports:
        return f"the edit may not import {', '.join(imports)}; new imports: {', '.join(sorted(ALLOWED_IMPORTS))}"
    patched = sorted((_module_targets(new) - _module_targets(old)).keys())
    if patched:
        return f"the edit may not replace attributes of imported modules: {', '.join(patched)} (no monkey-patching)"
    return None


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _identifiers(tree: ast.Module) -> Counter[tuple[str, str]]:
    """Every name, attribute and imported name, as (kind, identifier); kind "private" for a `_x` attribute reached
    on anything but self/cls (or torch's compiler settings)."""
    found: Counter[tuple[str, str]] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found["name", node.id] += 1
        elif isinstance(node, ast.Attribute):
            found["attribute", node.attr] += 1
            owner = node.value
            if (
                node.attr.startswith("_")
                and not _dunder(node.attr)
                and node.attr not in ALLOWED_PRIVATE
                and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls"))
            ):
                found["private", node.attr] += 1
        elif isinstance(node, ast.alias):
            for part in node.name.split("."):
                found["import", part] += 1
            if node.asname:
                found["name", node.asname] += 1
    return found


def _imported(tree: ast.Module) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    return modules


def _chain(node: ast.expr) -> tuple[ast.Name | None, str]:
    """The root name and dotted text of an attribute/subscript/call chain: `F.x[0].y` -> (F, "F.x[].y")."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            parts.append("[]")
            node = node.value
        elif isinstance(node, ast.Call):
            parts.append("()")
            node = node.func
        elif isinstance(node, ast.Name):
            return node, ".".join([node.id, *reversed(parts)]).replace(".[]", "[]").replace(".()", "()")
        else:
            return None, ""


def _module_aliases(tree: ast.Module) -> set[str]:
    """Names bound to a module: by an import, or by assigning a chain that starts at one (`G = torch.nn`)."""
    aliases = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    aliases |= {
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name != "*"
    }
    changed = True
    while changed:  # and every name assigned an attribute or item chain (not a call) rooted at one
        changed = False
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            root, _ = _chain(node.value)
            name = node.targets[0].id
            if not isinstance(node.value, ast.Call) and root is not None and root.id in aliases and name not in aliases:
                aliases.add(name)
                changed = True
    return aliases


def _module_targets(tree: ast.Module) -> Counter[str]:
    """Assignment and deletion targets that are attributes or items of a module (monkey-patching)."""
    aliases = _module_aliases(tree)
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        else:
            continue
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
            elif isinstance(target, ast.Attribute | ast.Subscript):
                root, dotted = _chain(target)
                if root is not None and root.id in aliases and not dotted.startswith(SETTABLE_MODULE_ATTRIBUTES):
                    found[dotted] += 1
    return found


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_name, new_name))
