"""The constants block of train.py: its one grammar, read, checked and rewritten here and nowhere else.

    # ---- hyperparameters: the inner loop edits this block ----
    NAME = value  # kind [bounds or choices] [log] [frozen] [multiple_of NAME*NAME...] [; what it means]
    # ---- end of hyperparameters ----

`kind` is `int`, `float` (bounds `[low, high]`), `choice` (`[choice, ...]`) or `bool` (no bracket). A value, a bound
or a choice is a literal or simple arithmetic on numbers, evaluated as Python evaluates it: `8192`, `8_192`, `2**13`,
`1 << 13`, `-1`, `3e-4`, `"muon"`, `True`. The text after the first `;` outside brackets and quotes is a short human
comment. Blank lines and comment lines inside the block are skipped; every other line is one constant.

The training process (gpt/runtime.py), the search space (mechanisms/space.py) and the candidate builder read the block
through this module, so a file one of them accepts is a file the others accept. Standard library only: gpt/ runs
alone as a subprocess.
"""

from __future__ import annotations

import ast
import io
import math
import operator
import tokenize
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BLOCK_START = "# ---- hyperparameters: the inner loop edits this block ----"
BLOCK_END = "# ---- end of hyperparameters ----"
KINDS = ("int", "float", "choice", "bool")
FLAGS = ("log", "frozen")
MAX_EXPONENT = 64  # `2**64` at most, and shifts by at most 64: a value is a number a person would write
_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}


class BlockError(ValueError):
    """A constants block, a line of it or a value that the grammar does not accept; the message says where."""


@dataclass(frozen=True)
class Constant:
    """One line of the block: the value as Python evaluates it and its declaration."""

    name: str
    value: Any
    kind: str  # int | float | choice | bool
    domain: tuple[Any, ...]  # (low, high) for int and float, the choices for choice, () for bool
    log: bool = False
    frozen: bool = False
    multiple_of: tuple[str, ...] = ()  # the value is a multiple of these constants' product
    doc: str = ""  # what it means, in a few words
    line: int = 0  # 1-based line number in the source
    span: tuple[int, int] = (0, 0)  # the value's text in that line, as character offsets


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def same(a: Any, b: Any) -> bool:
    """Equal as constants: numbers by value (8192 and 8192.0), anything else by type and value (1 is not True)."""
    return (is_number(a) and is_number(b) and a == b) or (type(a) is type(b) and a == b)


# ---- values ----------------------------------------------------------------------------------------------------------


def evaluate(text: str) -> Any:
    """The value of a literal or simple arithmetic expression, as Python computes it; BlockError for anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise BlockError(f"not a literal or simple expression: {text!r}") from exc
    return _evaluate(tree.body, text)


def _evaluate(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand, text)
        if not is_number(value):
            raise BlockError(f"unary sign on a non-number in {text!r}")
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, text), _evaluate(node.right, text)
        if not (is_number(left) and is_number(right)):
            raise BlockError(f"arithmetic on a non-number in {text!r}")
        if isinstance(node.op, ast.Pow | ast.LShift | ast.RShift) and abs(right) > MAX_EXPONENT:
            raise BlockError(f"exponent or shift above {MAX_EXPONENT} in {text!r}")
        try:
            return _OPERATORS[type(node.op)](left, right)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise BlockError(f"cannot evaluate {text!r}: {exc}") from exc
    raise BlockError(f"not a literal or simple expression: {text!r}")


def format_value(value: Any) -> str:
    """The source text of a value, which `evaluate` reads back as the same value."""
    if isinstance(value, bool | str) or (isinstance(value, int) and not isinstance(value, bool)):
        return repr(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise BlockError(f"{value!r} cannot be written as a constant (int, finite float, str or bool)")


# ---- the declaration -------------------------------------------------------------------------------------------------


def split_declaration(comment: str) -> tuple[str, str]:
    """``kind [bounds] flags; what it means`` -> (declaration, human comment): split at the first ``;`` that is
    outside brackets and quotes (a choice may contain one)."""
    depth, quote = 0, ""
    for i, char in enumerate(comment):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == ";" and depth == 0:
            return comment[:i].strip(), comment[i + 1 :].strip()
    return comment.strip(), ""


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(text + "\n").readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise BlockError(f"cannot tokenize ({exc})") from exc


def parse_declaration(text: str) -> tuple[str, tuple[Any, ...], frozenset[str], tuple[str, ...]]:
    """``kind [bounds or choices] [log] [frozen] [multiple_of NAME*NAME...]`` -> (kind, domain, flags, multiple_of);
    each element of the bracket is evaluated like a value."""
    tokens = [t for t in _tokens(text) if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    if not tokens or tokens[0].type != tokenize.NAME or tokens[0].string not in KINDS:
        raise BlockError(f"the comment must start with a kind ({', '.join(KINDS)})")
    kind, rest = tokens[0].string, tokens[1:]
    domain: tuple[Any, ...] = ()
    bracketed = bool(rest) and rest[0].string == "["
    if bracketed:
        depth, close = 0, None
        for i, tok in enumerate(rest):
            depth += {"[": 1, "]": -1}.get(tok.string, 0) if tok.type == tokenize.OP else 0
            if depth == 0:
                close = i
                break
        if close is None:
            raise BlockError("unclosed '['")
        bracket = text[rest[0].start[1] : rest[close].end[1]]
        node = ast.parse(bracket, mode="eval").body
        if not isinstance(node, ast.List):
            raise BlockError(f"bad bracket {bracket!r}")
        domain, rest = tuple(_evaluate(element, bracket) for element in node.elts), rest[close + 1 :]
    words = [t.string for t in rest]
    multiple: tuple[str, ...] = ()
    if "multiple_of" in words:  # multiple_of NAME*NAME...: the last clause
        at = words.index("multiple_of")
        factors = words[at + 1 :]
        names = factors[::2]
        if not names or any(not n.isidentifier() for n in names) or any(op != "*" for op in factors[1::2]):
            raise BlockError(f"multiple_of needs NAME or NAME*NAME..., got {' '.join(factors)!r}")
        if len(factors) % 2 == 0:
            raise BlockError(f"multiple_of ends with an operator: {' '.join(factors)!r}")
        if kind != "int":
            raise BlockError("multiple_of applies to int constants only")
        multiple, words = tuple(names), words[:at]
    if any(w not in FLAGS for w in words) or len(set(words)) != len(words):
        raise BlockError(f"unexpected flags {words}: only 'log', 'frozen' and a final 'multiple_of', each once")
    if kind in ("int", "float") and len(domain) != 2:
        raise BlockError(f"{kind} needs [low, high]")
    if kind == "choice" and not domain:
        raise BlockError("choice needs a non-empty list of choices")
    if kind == "bool" and bracketed:
        raise BlockError("bool takes no bounds")
    return kind, domain, frozenset(words), multiple


# ---- the block -------------------------------------------------------------------------------------------------------


def block_lines(source: str) -> tuple[int, int]:
    """1-based line numbers of the block's start and end markers: exactly one of each, the start first."""
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines, 1) if line.strip() == BLOCK_START]
    ends = [i for i, line in enumerate(lines, 1) if line.strip() == BLOCK_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise BlockError(f"expected exactly one hyperparameter block between {BLOCK_START!r} and {BLOCK_END!r}")
    return starts[0], ends[0]


def parse_line(line: str, number: int) -> Constant:
    """One line of the block (`number` is its 1-based line number, which every error names)."""
    where = f"line {number}: {line.strip()!r}"
    text = line.rstrip()
    try:
        if text != text.lstrip():
            raise BlockError("a constant starts in the first column (Python refuses an indented one)")
        comments = [t for t in _tokens(text) if t.type == tokenize.COMMENT]
        if len(comments) != 1:
            raise BlockError("needs a trailing comment '# kind [bounds] [log] [frozen]'")
        code = text[: comments[0].start[1]]
        declaration, doc = split_declaration(comments[0].string[1:].strip())
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            raise BlockError(f"not an assignment ({exc.msg})") from exc
        stmt = tree.body[0] if len(tree.body) == 1 else None
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise BlockError("expected 'NAME = literal'")
        value_node = stmt.value
        encoded = code.encode()  # ast offsets count UTF-8 bytes; the span counts characters
        start = len(encoded[: value_node.col_offset].decode())
        end = len(encoded[: value_node.end_col_offset].decode())
        value = _evaluate(value_node, code[start:end])
        kind, domain, flags, multiple = parse_declaration(declaration)
    except BlockError as exc:
        raise BlockError(f"{where}: {exc}") from exc
    return Constant(
        stmt.targets[0].id,
        value,
        kind,
        domain,
        "log" in flags,
        "frozen" in flags,
        multiple,
        doc,
        number,
        (start, end),
    )


def parse_block(source: str) -> list[Constant]:
    """Every constant of the block, in order; BlockError naming the line for anything the grammar refuses."""
    start, end = block_lines(source)
    lines = source.splitlines()
    found: list[Constant] = []
    for number in range(start + 1, end):
        line = lines[number - 1]
        if line.strip() and not line.strip().startswith("#"):
            found.append(parse_line(line, number))
    names = [c.name for c in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BlockError(f"duplicate constant {', '.join(duplicates)}")
    return found


def values(source: str) -> dict[str, Any]:
    """Name -> value of the block (unchecked against the declarations: see `problems`)."""
    return {c.name: c.value for c in parse_block(source)}


def rewrite(source: str, new_values: Mapping[str, Any]) -> str:
    """`source` with the block's constants set to `new_values`: each changed value's text replaced in place (the
    declaration, the comment and every other byte kept); a value equal to the current one keeps its text."""
    constants = {c.name: c for c in parse_block(source)}
    unknown = sorted(set(new_values) - set(constants))
    if unknown:
        raise BlockError(f"not constants of the hyperparameter block: {', '.join(unknown)}")
    lines = source.splitlines(keepends=True)
    for name, value in new_values.items():
        constant = constants[name]
        if type(value) is type(constant.value) and value == constant.value:
            continue
        text, (start, end) = lines[constant.line - 1], constant.span
        lines[constant.line - 1] = text[:start] + format_value(value) + text[end:]
    return "".join(lines)


# ---- what a value must satisfy ---------------------------------------------------------------------------------------


def type_problem(name: str, kind: str, value: Any) -> str | None:
    """Why `value` is not of the kind `kind`, or None (a float constant takes an int too)."""
    if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{name} takes an int, got {value!r}"
    if kind == "float" and not is_number(value):
        return f"{name} takes a float, got {value!r}"
    if kind == "float" and not math.isfinite(value):
        return f"{name} takes a finite float, got {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"{name} takes a bool, got {value!r}"
    return None


def range_problem(name: str, kind: str, domain: Sequence[Any], value: Any) -> str | None:
    """Why a value of the right kind lies outside the bounds or choices `domain`, or None."""
    if kind in ("int", "float") and not (domain[0] <= value <= domain[1]):
        return f"{name}={value!r} is outside [{domain[0]}, {domain[1]}]"
    if kind == "choice" and not any(same(value, c) for c in domain):
        return f"{name}={value!r} is not one of {list(domain)}"
    return None


def value_problem(name: str, kind: str, domain: Sequence[Any], value: Any) -> str | None:
    """Why `value` does not fit a constant declared `kind [domain]`, or None."""
    return type_problem(name, kind, value) or range_problem(name, kind, domain, value)


def multiple_problem(name: str, factors: Sequence[str], config: Mapping[str, Any]) -> str | None:
    """Why `config[name]` is not a multiple of the product of `factors` in `config`, or None (also when a name is
    missing or the product is 0: nothing to check)."""
    if not factors or not all(n in config for n in (name, *factors)):
        return None
    product = math.prod(config[n] for n in factors)
    if product and config[name] % product:
        return f"{name}={config[name]} is not a multiple of {'*'.join(factors)}={product}"
    return None


def problems(constants: Iterable[Constant]) -> list[str]:
    """Every way the block's values break their declarations: kind, bounds or choices, and `multiple_of`."""
    constants = list(constants)
    config = {c.name: c.value for c in constants}
    found = []
    for c in constants:
        wrong = value_problem(c.name, c.kind, c.domain, c.value)
        if wrong:
            found.append(wrong)
    if found:
        return found
    for c in constants:
        unknown = [n for n in c.multiple_of if n not in config]
        if unknown:
            found.append(f"{c.name}: multiple_of names {unknown}, which are not constants of the block")
        else:
            found.extend(p for p in [multiple_problem(c.name, c.multiple_of, config)] if p)
    return found
