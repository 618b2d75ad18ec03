"""Kernel config fragments: what they ask for, and what `make olddefconfig` kept of it.

A fragment holds lines of a kernel `.config`: `CONFIG_X=value` sets an option and
`# CONFIG_X is not set` turns one off; other comments and blank lines say nothing. Fragments
apply in order over the base config, a later request for an option replacing an earlier one, as
the kernel's own `merge_config.sh` does. Kconfig then quietly drops whatever it cannot honour
(an option that does not exist in this kernel, or whose dependencies are off), so each request
that counts is compared with the resolved `.config`, and the ones it lost are reported with the
fragment file and line that asked for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_SET = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# (CONFIG_[A-Za-z0-9_]+) is not set")


class FragmentError(ValueError):
    """A fragment line that is neither an option nor a comment; the message names file and line."""


@dataclass(frozen=True)
class Request:
    """One option a fragment asks for: `value` is what follows `=` ("y", "m", "0x10", '"text"'),
    None for `# CONFIG_X is not set` (and for `=n`, which Kconfig reads the same way)."""

    option: str
    value: str | None
    file: str
    line: int

    def shown(self) -> str:
        return f"# {self.option} is not set" if self.value is None else f"{self.option}={self.value}"


def parse_line(text: str) -> tuple[str, str | None] | None:
    """(option, value) for an option line of a .config or fragment; None for a comment or a blank."""
    stripped = text.strip()
    if (unset := _UNSET.fullmatch(stripped)) is not None:
        return unset.group(1), None
    if (assigned := _SET.fullmatch(stripped)) is not None:
        value = assigned.group(2)
        return assigned.group(1), None if value == "n" else value
    if stripped == "" or stripped.startswith("#"):
        return None
    raise ValueError("not a config line (`CONFIG_X=value`, `# CONFIG_X is not set` or a comment)")


def parse_fragment(text: str, file: str) -> list[Request]:
    """The requests of one fragment, in order. Raises FragmentError naming `file` and the line."""
    requests = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = parse_line(line)
        except ValueError as e:
            raise FragmentError(f"{file}:{number}: '{line.strip()}' is {e}") from None
        if parsed is not None:
            requests.append(Request(parsed[0], parsed[1], file, number))
    return requests


def effective(requests: Sequence[Request]) -> list[Request]:
    """The request that counts for each option (the last one), in the order they were given."""
    last = {request.option: index for index, request in enumerate(requests)}
    return [requests[index] for index in sorted(last.values())]


def merged(requests: Sequence[Request]) -> str:
    """The lines to append to the base .config: what counts, sorted by option (Kconfig reads them
    in any order), so that editing a comment, repeating an option or moving one changes nothing."""
    return "".join(f"{r.shown()}\n" for r in sorted(effective(requests), key=lambda r: r.option))


def parse_config(text: str) -> dict[str, str | None]:
    """The options of a resolved .config: value, or None for those shown as not set."""
    options: dict[str, str | None] = {}
    for line in text.splitlines():
        try:
            parsed = parse_line(line)
        except ValueError:
            continue  # a resolved .config holds only options and comments; anything else is not ours to judge
        if parsed is not None:
            options[parsed[0]] = parsed[1]
    return options


def dropped(requests: Sequence[Request], resolved: Mapping[str, str | None]) -> list[tuple[Request, str]]:
    """Each request that counts and that the resolved config does not honour, with what it has instead.

    An option asked to be off and absent from the resolved config is honoured: Kconfig leaves out
    an option whose dependencies are off, and such an option is off."""
    lost = []
    for request in effective(requests):
        if request.option not in resolved:
            if request.value is not None:
                lost.append((request, "it is not in the resolved config: this kernel has no such option, or an "
                                      "option it depends on is off"))
        elif resolved[request.option] != request.value:
            now = resolved[request.option]
            has = Request(request.option, now, "", 0).shown()
            why = "an option it depends on is off" if now is None else "another option selects it" \
                if request.value is None else "a dependency, a select or a range allows no other value"
            lost.append((request, f"the resolved config has '{has}' ({why})"))
    return lost
