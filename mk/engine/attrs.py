"""Attribute types: the shape a BUILD value must have, and the typed value a rule receives.

A type checks the Starlark value, then may convert it (an octal mode string becomes an int, a
'uid:gid' pair a tuple), so no rule parses strings or checks allowed values by hand. A
conversion that fails raises `ValueError` with the reason; the loader adds the file, line,
target and attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mk.cache.tree import ID_MAX


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_str_dict(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttrType:
    name: str  # as shown in BUILD.md and errors: "list of strings"
    accepts: Callable[[object], bool]
    convert: Callable[[Any], object] | None = None  # raises ValueError(reason)
    holds_labels: bool = False
    holds_outputs: bool = False
    words: tuple[str, ...] = ()  # strings that stand in place of a label and name no dependency

    def value_of(self, value: object) -> object:
        return self.convert(value) if self.convert is not None else value


STRING = AttrType("string", _is_str)
STRING_LIST = AttrType("list of strings", _is_str_list)
STRING_DICT = AttrType("dict of string to string", _is_str_dict)
BOOL = AttrType("bool", _is_bool)
INT = AttrType("int", _is_int)
LABEL = AttrType("label", _is_str, holds_labels=True)
LABEL_LIST = AttrType("list of labels", _is_str_list, holds_labels=True)
LABEL_DICT = AttrType("dict of string to label", _is_str_dict, holds_labels=True)
TOOLCHAIN = AttrType('label, or "host"', _is_str, holds_labels=True, words=("host",))
OUTPUT = AttrType("output file name", _is_str, holds_outputs=True)
OUTPUT_LIST = AttrType("list of output file names", _is_str_list, holds_outputs=True)


def label_texts(value: object, words: tuple[str, ...] = ()) -> list[str]:
    """The label strings of a label attribute's value (for a dict, its values in order), less
    the `words` its type accepts in place of a label."""
    if value is None:  # an optional label attribute left unset
        return []
    if isinstance(value, str):
        return [value] if value and value not in words else []
    if isinstance(value, dict):
        return list(value.values())
    assert isinstance(value, list)
    return value


def output_names(value: object) -> list[str]:
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else []


def one_of(*allowed: str) -> AttrType:
    """A string from a fixed set."""
    shown = ", ".join(f"'{a}'" for a in allowed)

    def convert(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"'{value}' is not one of {shown}")
        return value

    return AttrType(f"one of {shown}", _is_str, convert)


def records(name: str, parse: Callable[[str], object]) -> AttrType:
    """A list of records, each written as a string that `parse` turns into a value."""

    def convert(value: list[str]) -> list[object]:
        return [parse(v) for v in value]

    return AttrType(f"list of {name}", _is_str_list, convert)


def keyed_records(name: str, parse: Callable[[str, str], object]) -> AttrType:
    """A dict from a path (or other key) to a record written as a string; `parse(key, text)`."""

    def convert(value: dict[str, str]) -> dict[str, object]:
        return {k: parse(k, v) for k, v in value.items()}

    return AttrType(f"dict of string to {name}", _is_str_dict, convert)


# ---- records shared by rule families --------------------------------------------------------

def parse_id(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > ID_MAX:
        raise ValueError(f"{what} '{text}' is not a number from 0 to {ID_MAX}")
    return int(text)


def octal_mode(path: str, text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode '{text}' for '{path}' is not an octal mode like '0755'")
    return mode


def owner(path: str, text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not sep:
        raise ValueError(f"owner '{text}' for '{path}' must be numeric 'uid:gid'")
    return parse_id(uid, f"uid of '{path}'"), parse_id(gid, f"gid of '{path}'")


def split_fields(text: str, separator: str, counts: Sequence[int], form: str) -> list[str]:
    parts = text.split(separator) if separator else text.split()
    if len(parts) not in counts:
        raise ValueError(f"'{text}' must be {form}")
    return parts
