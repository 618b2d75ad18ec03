"""User-facing errors: every one names where the problem is and what to do about it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def a_or_an(noun: str) -> str:
    """'a layer', 'an image': the article a noun takes (by its first letter, which is enough for
    the names of rules)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


@dataclass(frozen=True)
class Location:
    file: str  # relative to the workspace root
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class MkError(Exception):
    """An error in the user's input or environment, printed without a Python traceback."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        return f"{prefix}error: {self.message}"


def did_you_mean(word: str, candidates: Iterable[str], limit: int = 3, within: str = "") -> str:
    """' (did you mean 'x'?)' for the nearest candidates, or '' when none is close. With `within`
    (a folder the candidates are names in), names are compared alone and shown in the folder."""
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, sorted(set(candidates)), n=limit, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{within}{c}'" for c in close) + "?)"
