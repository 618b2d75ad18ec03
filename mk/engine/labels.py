"""Labels (`//pkg:name`, `:name`, `//pkg`) and target patterns (`//pkg:all`, `//...`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PACKAGE_RE = re.compile(r"^(?:[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*)?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+=,@~-][A-Za-z0-9_.+=,@~/-]*$")


class LabelError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Label:
    package: str  # "" is the workspace root package
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"

    @staticmethod
    def parse(text: str, current_package: str | None = None) -> Label:
        """Parse an absolute label, or a relative `:name` when `current_package` is given."""
        if text.startswith("//"):
            body = text[2:]
            package, sep, name = body.partition(":")
            if not sep:
                name = package.rsplit("/", 1)[-1]
                if not name:
                    raise LabelError(f"invalid label '{text}': //  needs a package or ':name'")
        elif text.startswith(":") and current_package is not None:
            package, name = current_package, text[1:]
        elif current_package is not None and ":" not in text and not text.startswith("/"):
            package, name = current_package, text
        else:
            raise LabelError(f"invalid label '{text}': expected //package:name or :name")
        _check(text, package, name)
        return Label(package, name)


def _check(text: str, package: str, name: str) -> None:
    if not _PACKAGE_RE.match(package) or any(p in ("..", ".") for p in package.split("/")):
        raise LabelError(f"invalid package '{package}' in label '{text}'")
    if not name or not _NAME_RE.match(name) or any(p in ("..", ".") for p in name.split("/")):
        raise LabelError(f"invalid target name '{name}' in label '{text}'")


@dataclass(frozen=True)
class Pattern:
    """`//pkg:name`, `//pkg:all` (every target in pkg) or `//pkg/...` (pkg and below)."""

    package: str
    name: str | None  # None: all targets
    recursive: bool

    @staticmethod
    def parse(text: str) -> Pattern:
        """An absolute pattern; see `absolute` for those written relative to a folder."""
        if not text.startswith("//"):
            text = "//" + text.lstrip("/")
        if text == "//..." or text.endswith("/..."):
            package = text[2:].removesuffix("...").rstrip("/")
            _check(text, package, "all")
            return Pattern(package, None, True)
        label = Label.parse(text)
        if label.name == "all":
            return Pattern(label.package, None, False)
        return Pattern(label.package, label.name, False)

    @staticmethod
    def absolute(text: str, current_package: str) -> str:
        """`text` as written in the folder of `current_package`, as Bazel reads it: `:web` or `web`
        names a target there, `sub:x` and `sub/...` are below it, and `//...` stays absolute."""
        if text.startswith("//"):
            return text
        if not current_package:
            return "//" + text.lstrip("/")
        if text.startswith(":"):
            return f"//{current_package}{text}"
        if "/" not in text and ":" not in text and text != "...":
            return f"//{current_package}:{text}"
        return f"//{current_package}/{text}"

    def covers_package(self, package: str) -> bool:
        if self.recursive:
            return self.package == "" or package == self.package or package.startswith(self.package + "/")
        return package == self.package
