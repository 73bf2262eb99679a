"""Static AST policy for generated mechanism source: what may be imported, named, called and reached.

The sandbox contains what gets past this check; the policy's job is to refuse the obvious escapes early, with a line
number and a reason the outer loop's LLM can act on.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field
from typing import Any

from mechanisms.base import TARGETS

ALLOWED_IMPORTS = frozenset(
    {"math", "random", "itertools", "collections", "statistics", "functools", "heapq", "dataclasses", "typing", "numpy"}
)
FORBIDDEN_MODULES = frozenset(
    {
        "os",
        "sys",
        "subprocess",
        "socket",
        "importlib",
        "pickle",
        "marshal",
        "ctypes",
        "builtins",
        "shutil",
        "io",
        "pathlib",
        "base64",
        "codecs",
        "inspect",
        "gc",
        "threading",
        "multiprocessing",
        "signal",
        "resource",
        "pty",
        "urllib",
        "http",
        "requests",
        "types",
        "code",
        "runpy",
        "tempfile",
        "operator",
    }
)
FORBIDDEN_CALLS = frozenset(
    {
        "open",
        "exec",
        "eval",
        "compile",
        "__import__",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "memoryview",
        "help",
        "exit",
        "quit",
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
    }
)
FORBIDDEN_ATTRIBUTES = (
    frozenset(
        {
            "f_globals",
            "f_locals",
            "f_builtins",
            "f_back",
            "f_code",
            "f_trace",
            "gi_frame",
            "gi_code",
            "cr_frame",
            "cr_code",
            "ag_frame",
            "ag_code",
            "tb_frame",
            "tb_next",
            "co_code",
            "func_globals",
            "environ",
            "mro",
            "format_map",
            # numpy's file and pickle I/O (the sandbox has no file to read and nowhere to write; say so early)
            "load",
            "save",
            "savez",
            "savez_compressed",
            "fromfile",
            "tofile",
            "memmap",
            "loadtxt",
            "savetxt",
            "genfromtxt",
            "fromregex",
            "DataSource",
            "ctypeslib",
            "dump",
        }
    )
    | FORBIDDEN_MODULES
)  # a forbidden module reached as an attribute of an allowed one: typing.sys, dataclasses.sys
ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
DUNDER_METHODS = frozenset(
    {
        "__init__",
        "__post_init__",
        "__repr__",
        "__str__",
        "__eq__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__len__",
        "__iter__",
        "__contains__",
    }
)
MAX_SOURCE_CHARS = 20_000  # also what one structured answer field may hold (llm/structured.py)
MAX_NAME_CHARS = 64  # NAME becomes the mechanism's id (NAME@hash) and its folder name


@dataclass(frozen=True)
class Violation:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class PolicyReport:
    ok: bool
    violations: list[Violation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def messages(self) -> list[str]:
        return [str(v) for v in self.violations]


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _Checker(ast.NodeVisitor):
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.allowed_calls: set[int] = set()  # ids of Name nodes that are the func of a literal getattr-like call

    def refuse(self, node: ast.AST, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0), message))

    def _module(self, node: ast.AST, module: str) -> None:
        top = module.split(".")[0]
        if top in FORBIDDEN_MODULES:
            self.refuse(node, f"import of {module!r} is forbidden (no I/O, processes or introspection)")
        elif top not in ALLOWED_IMPORTS:
            self.refuse(node, f"import of {module!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_IMPORTS))}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            self.refuse(node, "relative imports are not allowed")
        else:
            self._module(node, node.module)
        for alias in node.names:
            if alias.name == "*":
                self.refuse(node, "'from ... import *' is not allowed")
            elif alias.name.startswith("_"):
                self.refuse(node, f"importing private name {alias.name!r} is not allowed")

    def visit_Global(self, node: ast.Global) -> None:
        self.refuse(node, "'global' is not allowed: a mechanism keeps no hidden state (derive memory from view.trace)")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTRIBUTE_BUILTINS:
            key = node.args[1] if len(node.args) > 1 else None
            name = key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
            if name is not None and name in FORBIDDEN_ATTRIBUTES:  # getattr(gen, "gi_frame") is gen.gi_frame
                self.refuse(node, f"{func.id}() of the forbidden attribute {name!r}")
            elif name is not None and not name.startswith("_"):
                self.allowed_calls.add(id(func))
            else:
                self.refuse(node, f"{func.id}() needs a literal attribute name that does not start with '_'")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ATTRIBUTE_BUILTINS and id(node) in self.allowed_calls:
            return
        if node.id in FORBIDDEN_CALLS:
            self.refuse(node, f"use of {node.id!r} is forbidden")
        elif _dunder(node.id):
            self.refuse(node, f"dunder name {node.id!r} is forbidden")
        elif node.id in FORBIDDEN_MODULES:
            self.refuse(node, f"name {node.id!r} (a forbidden module) is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        is_super_init = (
            attr == "__init__"
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "super"
        )
        if _dunder(attr) and not is_super_init:
            self.refuse(node, f"dunder attribute {attr!r} is forbidden")
        elif attr in FORBIDDEN_ATTRIBUTES:
            self.refuse(node, f"attribute {attr!r} is forbidden")
        elif attr.startswith("_") and not _dunder(attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                self.refuse(node, f"private attribute {attr!r} is only reachable on self/cls")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "__" in node.value:
            self.refuse(node, "string constants may not contain '__' (format-string and lookup tricks)")
        elif isinstance(node.value, bytes):
            self.refuse(node, "bytes constants are not allowed")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.refuse(node, "async functions are not allowed")
        self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if _dunder(node.name) and node.name not in DUNDER_METHODS:
            self.refuse(node, f"defining {node.name!r} is not allowed")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if node.keywords:
            self.refuse(node, "class keywords (metaclass=...) are not allowed")
        self.generic_visit(node)


def _check_header(tree: ast.Module) -> list[Violation]:
    found: dict[str, Any] = {}
    entries: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("NAME", "TARGET"):
                found[node.targets[0].id] = node.value.value if isinstance(node.value, ast.Constant) else None
        elif isinstance(node, ast.FunctionDef):
            entries[node.name] = node
    out = []
    name, target = found.get("NAME"), found.get("TARGET")
    if not (isinstance(name, str) and name.isidentifier()):
        out.append(Violation(1, "the module must declare NAME = '<identifier>' at top level"))
    elif len(name) > MAX_NAME_CHARS:
        out.append(Violation(1, f"NAME has {len(name)} characters (at most {MAX_NAME_CHARS})"))
    if target not in TARGETS:
        out.append(Violation(1, f"the module must declare TARGET = one of {list(TARGETS)} at top level"))
    elif target not in entries:
        out.append(Violation(1, f"the module must define the entry function 'def {target}(view):' at top level"))
    elif not entries[target].args.args:
        out.append(Violation(entries[target].lineno, f"{target}() must take the view as its first argument"))
    return out


def check_source(source: str) -> PolicyReport:
    """Check generated mechanism source; ``ok`` only when there are no violations."""
    if len(source) > MAX_SOURCE_CHARS:
        return PolicyReport(False, [Violation(0, f"source longer than {MAX_SOURCE_CHARS} characters")])
    try:
        tree = ast.parse(source)
        checker = _Checker()
        checker.visit(tree)
    except SyntaxError as exc:
        return PolicyReport(False, [Violation(exc.lineno or 0, f"syntax error: {exc.msg}")])
    except (RecursionError, MemoryError):
        return PolicyReport(False, [Violation(0, "the source nests expressions too deeply to be checked")])
    violations = sorted(checker.violations + _check_header(tree), key=lambda v: v.line)
    return PolicyReport(not violations, violations)


@dataclass(frozen=True)
class Rule:
    """One rule of the policy, stated for the author of a mechanism; ``key`` names it for tests and docs."""

    key: str
    text: str


def _names(names: frozenset[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))


def policy_rules() -> list[Rule]:
    """The policy as sentences built from the constants above, in the order ``check_source`` applies them: the
    generate prompt and docs/mechanisms.md state exactly these, so what a model is told cannot drift from what is
    enforced."""
    future = (
        "; `from __future__ import ...` is refused too (not an allowed module)"
        if "__future__" not in ALLOWED_IMPORTS
        else ""
    )
    plain_calls = FORBIDDEN_CALLS - ATTRIBUTE_BUILTINS
    return [
        Rule("size", f"The module is at most {MAX_SOURCE_CHARS:,} characters long."),
        Rule(
            "header",
            'At top level, plain assignments (no annotation) of string literals: `NAME = "..."`, a Python '
            f"identifier of at most {MAX_NAME_CHARS} characters (CamelCase is fine; it is the mechanism's name), and "
            f'`TARGET = "propose"`; and the entry function named after TARGET taking the view: `def propose(view):`.',
        ),
        Rule(
            "imports",
            f"Import only {_names(ALLOWED_IMPORTS)} (and their submodules); never {_names(FORBIDDEN_MODULES)}, and "
            f"no variable may carry one of these forbidden module names; no relative imports, no `import *`, no "
            f"imported name starting with `_`{future}.",
        ),
        Rule("global", "No `global` statement: derive every memory from `view.trace`."),
        Rule(
            "calls",
            f"Never use the names {_names(plain_calls)}; {_names(ATTRIBUTE_BUILTINS)} only with a literal attribute "
            'name that does not start with `_` (e.g. `getattr(obj, "name", None)`).',
        ),
        Rule(
            "dunder",
            "No dunder name (two leading and two trailing underscores) as a name or an attribute, except "
            "`super().__init__(...)`.",
        ),
        Rule("attributes", f"Never reach the attributes {_names(FORBIDDEN_ATTRIBUTES)}."),
        Rule(
            "private",
            "A private attribute `obj._x` only on `self` or `cls` (module-level `_helper` functions are fine).",
        ),
        Rule(
            "strings",
            "No string constant may contain two consecutive underscores, docstrings and f-string parts included; "
            "no bytes constants.",
        ),
        Rule("async", "No `async def`."),
        Rule(
            "methods",
            f"A class may define only these dunder methods: {_names(DUNDER_METHODS)} (so no `__getitem__`, "
            "`__call__`, `__getattr__`, ...).",
        ),
        Rule("class_keywords", "No class keywords (`metaclass=...`)."),
    ]
