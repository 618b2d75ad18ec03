"""A guard against BUILD files that would overflow the Starlark parser's stack.

starlark-rust parses and evaluates recursively: a few thousand nested brackets, or a long enough
chain of operators in one expression, crash the process (SIGSEGV) with no message. Before a file
is parsed, this scan refuses nesting and operator chains far beyond anything a real BUILD file
holds, naming the line. It reads the text once, with strings and comments blanked out.
"""

from __future__ import annotations

import re

MAX_NESTING = 100
MAX_OPERATORS = 1000  # in one statement: `a + b + ...` nests as deeply as brackets do

STRINGS_AND_COMMENTS = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|#[^\n]*'
)
_OPERATOR_WORDS = re.compile(r"\b(?:not|and|or|if|else|in|lambda)\b")
_OPENING, _CLOSING = "([{", ")]}"
_SIGNIFICANT = re.compile(r"[()\[\]{}\n+\-*/%|&^~<>]")  # brackets, newlines and operators


class TooDeepError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def check(source: str) -> None:
    """Raises TooDeepError naming the first line where `source` goes past a limit."""
    code = STRINGS_AND_COMMENTS.sub(lambda m: "\n" * m.group(0).count("\n"), source)
    depth = operators = 0
    line = statement_line = 1
    start = 0
    for match in _SIGNIFICANT.finditer(code):
        char, index = match.group(), match.start()
        if char in _OPENING:
            depth += 1
            if depth > MAX_NESTING:
                raise TooDeepError(f"brackets nest deeper than {MAX_NESTING} levels", line)
        elif char in _CLOSING:
            depth = max(0, depth - 1)
        elif char == "\n":
            if depth == 0:  # the end of a statement
                operators += len(_OPERATOR_WORDS.findall(code, start, index))
                _check_operators(operators, statement_line)
                operators, start, statement_line = 0, index, line + 1
            line += 1
        else:
            operators += 1
        if operators > MAX_OPERATORS:
            _check_operators(operators, statement_line)
    _check_operators(operators + len(_OPERATOR_WORDS.findall(code, start)), statement_line)


def _check_operators(count: int, line: int) -> None:
    if count > MAX_OPERATORS:
        raise TooDeepError(f"one statement holds more than {MAX_OPERATORS} operators; split it up", line)
