"""The shape a newcomer can live in: module files stay thin, functions stay short.

A module file holds its documentation and the few lines that bind options to the logic in
``plugins/module_utils`` (where unit tests import it); no function anywhere in ``plugins/``
runs past a screen and a half.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PLUGINS = pathlib.Path(__file__).resolve().parents[2] / "plugins"
MODULE_CODE_LINES = 400
FUNCTION_LINES = 80
DOC_NAMES = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def code_lines(source: str) -> int:
    """Lines of code: no blank lines, comments, docstrings or the DOCUMENTATION/EXAMPLES/RETURN strings."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") in DOC_NAMES for target in node.targets):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                skip.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if number not in skip and line.strip() and not line.strip().startswith("#"))


def long_functions(source: str) -> list[tuple[str, int]]:
    return [(node.name, (node.end_lineno or node.lineno) - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (node.end_lineno or node.lineno) - node.lineno + 1 > FUNCTION_LINES]


def test_the_counter_skips_docs_docstrings_and_comments():
    source = 'DOCUMENTATION = r"""\nx: 1\n"""\n\n\ndef f():\n    """Doc."""\n    # why\n    return 1\n'
    assert code_lines(source) == 2
    assert long_functions("def f():\n" + "    x = 1\n" * FUNCTION_LINES) == [("f", FUNCTION_LINES + 1)]


@pytest.mark.parametrize("path", sorted(PLUGINS.glob("modules/*.py")), ids=lambda p: p.name)
def test_a_module_file_is_thin(path):
    assert code_lines(path.read_text()) <= MODULE_CODE_LINES


@pytest.mark.parametrize("path", sorted(PLUGINS.rglob("*.py")), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_no_function_runs_past_eighty_lines(path):
    assert long_functions(path.read_text()) == []
