"""Starlark's parse errors, said the way a person would: where a bracket was left open, and the
few tokens that could have come next rather than the parser's fifty.

The parser reports a bracket left open at the end of a file at 1:1, and lists every token its
grammar allows at the error. Both are rewritten from the brackets open at the error's position,
found by one scan of the text with strings and comments blanked out (as `depth` does).
"""

from __future__ import annotations

import re

from mk.engine.depth import STRINGS_AND_COMMENTS
from mk.engine.errors import Location

_UNEXPECTED = re.compile(r"^unexpected (.+?) here, expected one of (.+)$", re.DOTALL)
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_VALUES = ('"IDENTIFIER"', '"STRING"', '"INTEGER"')
_OPERATORS = ('"=="', '"and"')  # binary ones only: '+' and '-' may also begin a value


def open_brackets(source: str, line: int, column: int) -> list[tuple[str, Location]]:
    """The brackets still open just before `line`:`column` (1-based), innermost last; a column of
    0 means the end of the source."""
    code = STRINGS_AND_COMMENTS.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), source)
    stack: list[tuple[str, Location]] = []
    for number, text in enumerate(code.split("\n"), start=1):
        for index, char in enumerate(text, start=1):
            if column and (number, index) >= (line, column):
                return stack
            if char in _CLOSERS:
                stack.append((char, Location("", number, index)))
            elif char in _CLOSERS.values() and stack:
                stack.pop()
    return stack


def readable(message: str, location: Location | None, source: str) -> tuple[str, Location | None]:
    """`message` and `location` of a parse error of `source`, rewritten where they mislead."""
    match = _UNEXPECTED.match(message)
    if match is None or location is None:
        return message, location
    unclosed = open_brackets(source, 0, 0)
    if unclosed and match.group(1) == "new line" and (location.line, location.column) == (1, 1):
        bracket, where = unclosed[-1]
        return f"'{bracket}' is never closed", Location(location.file, where.line, where.column)
    expected = match.group(2)
    inside = open_brackets(source, location.line, location.column)
    return f"unexpected {match.group(1)} here, expected {_few(expected, inside)}", location


def _few(expected: str, inside: list[tuple[str, Location]]) -> str:
    words = []
    if any(token in expected for token in _VALUES):
        words.append("a value")
    if inside:
        bracket, where = inside[-1]
        closer = _CLOSERS[bracket]
        if f'"{closer}"' in expected:
            words += ["','", f"'{closer}' (closing the '{bracket}' at {where.line}:{where.column})"]
    elif '"\\n"' in expected:
        words.append("the end of the line")
    if any(token in expected for token in _OPERATORS):
        words.append("an operator")
    if not words:
        return f"one of {expected}"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
