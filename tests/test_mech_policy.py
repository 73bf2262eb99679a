"""The static policy refuses hostile generated source, with a line number and a reason."""

import pytest

from mechanisms.policy import check_source

HEADER = 'NAME = "hostile"\nTARGET = "propose"\n'
ENTRY = "\ndef propose(view):\n    return view.ask_llm()\n"

HOSTILE = {
    "dunder import": ("x = __import__('os')", "'__import__'"),
    "importlib": ("import importlib", "'importlib' is forbidden"),
    "os environ": ("import os\nsecret = os.environ['KEY']", "'os' is forbidden"),
    "from os": ("from os import environ", "'os' is forbidden"),
    "getattr on a string": ("import math\nf = getattr(math, 'sy' + 'stem')", "literal attribute name"),
    "getattr dunder": ("f = getattr(1, '_x')", "literal attribute name"),
    "getattr as a value": ("g = getattr", "'getattr' is forbidden"),
    "builtins dict": ("b = __builtins__", "'__builtins__'"),
    "subclasses": ("s = ().__class__.__bases__[0].__subclasses__()", "'__subclasses__'"),
    "function globals": ("def f():\n    pass\ng = f.__globals__", "'__globals__'"),
    "frame objects": ("def f():\n    yield 1\nfr = f().gi_frame.f_back", "'gi_frame' is forbidden"),
    "traceback frames": ("try:\n    1 / 0\nexcept Exception as e:\n    fr = e.__traceback__.tb_frame", "dunder"),
    "pickle": ("import pickle", "'pickle' is forbidden"),
    "marshal": ("import marshal", "'marshal' is forbidden"),
    "base64 and exec": ("import base64\nexec(base64.b64decode('cHJpbnQoMSk='))", "'exec' is forbidden"),
    "eval": ("x = eval('1+1')", "'eval' is forbidden"),
    "open": ("data = open('/etc/passwd').read()", "'open' is forbidden"),
    "subprocess": ("import subprocess", "'subprocess' is forbidden"),
    "socket": ("import socket", "'socket' is forbidden"),
    "ctypes": ("import ctypes", "'ctypes' is forbidden"),
    "sys modules": ("import sys", "'sys' is forbidden"),
    "private module attribute": ("import random\nos = random._os", "private attribute"),
    "format-string lookup": ("s = '{0.__class__}'.format(1)", "'__'"),
    "globals call": ("g = globals()", "'globals' is forbidden"),
    "relative import": ("from . import base", "relative imports"),
    "not allowlisted": ("import json", "not allowed"),
    "global state": ("COUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1", "no hidden state"),
    "metaclass": ("class A(metaclass=type):\n    pass", "metaclass"),
    "breakpoint": ("breakpoint()", "'breakpoint' is forbidden"),
    "compile": ("c = compile('1', 'x', 'eval')", "'compile' is forbidden"),
}


@pytest.mark.parametrize("trick", sorted(HOSTILE))
def test_refuses_hostile_snippets(trick: str) -> None:
    snippet, reason = HOSTILE[trick]
    report = check_source(HEADER + snippet + ENTRY)
    assert not report.ok
    assert any(reason in v.message for v in report.violations), report.messages()
    assert all(v.line >= 1 for v in report.violations)


def test_accepts_an_honest_mechanism() -> None:
    source = HEADER + (
        "import math\nfrom collections import Counter\nimport numpy as np\n\n"
        "class Memory:\n    def __init__(self, trace):\n        self.counts = Counter()\n"
        "        self._trace = trace\n\n"
        "def propose(view):\n    best = getattr(view, 'best_bpb')\n    scale = math.sqrt(len(view.trace) + 1)\n"
        "    return view.ask_llm(f'scale {scale} best {best} {np.float64(1.0)}')\n"
    )
    report = check_source(source)
    assert report.ok, report.messages()


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def propose(view):\n    return {}\n", "must declare NAME"),
        ('NAME = "x"\nTARGET = "train"\ndef propose(view):\n    return {}\n', "TARGET = one of"),
        ('NAME = "x"\nTARGET = "decide"\ndef propose(view):\n    return {}\n', "def decide(view)"),
        ('NAME = "x"\nTARGET = "propose"\ndef propose():\n    return {}\n', "first argument"),
        ('NAME = "x"\nTARGET = "propose"\ndef propose(view)\n', "syntax error"),
    ],
)
def test_requires_the_contract(source: str, reason: str) -> None:
    report = check_source(source)
    assert not report.ok and any(reason in m for m in report.messages()), report.messages()
