"""The shape the code keeps: every function in ``services/`` and ``libs/`` reads top to
bottom in at most 60 lines, and takes at most six parameters (constructors aside: they
receive their dependencies). Migrations and tests are not held to it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAX_PARAMETERS = 6


def _sources() -> Iterator[Path]:
    for tree in (*ROOT.glob("services/*/src"), *ROOT.glob("libs/*/src")):
        for path in sorted(tree.rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def _functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    named = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    starred = [a for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in named if n not in ("self", "cls")]) + len(starred)


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = [
        f"{where} ({node.end_lineno - node.lineno + 1} lines)"
        for where, node in _functions()
        if node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, "split these into steps:\n" + "\n".join(long)


def test_no_function_but_a_constructor_takes_more_than_six_parameters() -> None:
    many = [
        f"{where} ({_parameters(node)} parameters)"
        for where, node in _functions()
        if node.name != "__init__" and _parameters(node) > MAX_PARAMETERS
    ]
    assert not many, "give these one input object:\n" + "\n".join(many)


def test_the_rule_sees_the_code() -> None:
    """A guard against the two tests above passing by reading nothing."""
    assert sum(1 for _ in _functions()) > 500
