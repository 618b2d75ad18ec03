"""Loading: evaluates BUILD and .bzl files (Starlark, via starlark-pyo3) into targets.

Rules are exposed to Starlark as thin wrappers defined in a prelude, so that each call can
pass its call stack and errors can point at the user's line rather than the wrapper's.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import starlark as sl

from mk.engine import depth, syntax
from mk.engine.attrs import output_names
from mk.engine.errors import Location, MkError, a_or_an, did_you_mean
from mk.engine.graph_cache import NotUtf8Error, Observations
from mk.engine.labels import Label, LabelError, Pattern
from mk.engine.rule_api import Rule
from mk.engine.targets import Target
from mk.engine.workspace import MARKER, OUTPUT_DIR, Workspace
from mk.globs import glob_regex

BUILD_FILE = "BUILD"
_FRAME = re.compile(r"^\s*\* (.+?):(\d+), in ", re.MULTILINE)
# MULTILINE: an error raised inside a call comes after a "Traceback" block, not at the start.
_STARLARK_SPAN = re.compile(r"^error: (.*?)\n\s*--> (.+?):(\d+):(\d+)", re.DOTALL | re.MULTILINE)


def _prelude(rules: Mapping[str, Rule]) -> str:
    return "".join(f"def {name}(**kwargs):\n    _mk_rule({name!r}, call_stack(strip_frames=1), kwargs)\n"
                   for name in sorted(rules))


@dataclass
class Package:
    name: str
    targets: dict[str, Target] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # output file name -> target name


class Loader:
    def __init__(self, workspace: Workspace, rules: Mapping[str, Rule], seconds: float | None = None) -> None:
        """`seconds`: how long evaluating BUILD and .bzl files may take in all (None: no limit)."""
        self.root = workspace.root
        self.settings = workspace.settings
        self.rules = rules
        self._deadline = time.monotonic() + seconds if seconds is not None else None
        self._seconds = seconds
        # Starlark asks this every thousand or so instructions; True stops the evaluation.
        self._options = sl.EvalOptions(check_cancelled=self._out_of_time if seconds is not None else None)
        self.observed = Observations()
        self.observed.depends_on(workspace.root / MARKER)
        self._globals = sl.Globals.extended_by(
            [sl.LibraryExtension.StructType, sl.LibraryExtension.CallStack]
        )
        self._prelude = sl.parse("<prelude>", _prelude(rules))
        self._packages: dict[str, Package] = {}
        self._bzl_cache: dict[str, sl.FrozenModule] = {}
        self._lines: dict[str, list[str]] = {}
        self._file_stack: list[str] = []
        self._current: Package | None = None
        self._pending: MkError | None = None

    # ---- packages and patterns -------------------------------------------------------------

    def has_package(self, name: str) -> bool:
        return self.observed.is_file(self.root / name / BUILD_FILE)

    def package(self, name: str) -> Package:
        if name not in self._packages:
            if not self.has_package(name):
                where = f"{name}/{BUILD_FILE}" if name else BUILD_FILE
                raise MkError(f"no package '//{name}': {where} does not exist")
            self._packages[name] = self._evaluate_build(name)
        return self._packages[name]

    def target(self, label: Label) -> Target | None:
        return self.package(label.package).targets.get(label.name)

    def expand(self, pattern_text: str) -> list[Label]:
        try:
            pattern = Pattern.parse(pattern_text)
        except LabelError as e:
            raise MkError(str(e)) from None
        if pattern.recursive:
            labels = [
                t.label for pkg in self.packages_under(pattern.package)
                for t in self.package(pkg).targets.values()
            ]
            if not labels:
                raise MkError(f"pattern '{pattern_text}' matches no targets")
            return sorted(labels)
        package = self.package(pattern.package)
        if pattern.name is None:
            return sorted(t.label for t in package.targets.values())
        if pattern.name not in package.targets:
            raise MkError(self.missing_target_message(Label(pattern.package, pattern.name)))
        return [Label(pattern.package, pattern.name)]

    def packages_under(self, prefix: str) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root / prefix):
            self.observed.listed(dirpath)
            rel = os.path.relpath(dirpath, self.root)
            dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(rel, d))
            if BUILD_FILE in filenames:
                found.append("" if rel == "." else rel)
        return sorted(found)

    def package_files(self, name: str) -> list[str]:
        """Files of a package, relative to it; subpackages and hidden folders are not entered."""
        base = self.root / name
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            self.observed.listed(dirpath)
            rel = os.path.relpath(dirpath, base)
            dirnames[:] = [
                d for d in dirnames
                if not _skipped_dir(os.path.relpath(dirpath, self.root), d)
                and not self.observed.is_file(Path(dirpath) / d / BUILD_FILE)
            ]
            files.extend(f if rel == "." else f"{rel}/{f}" for f in filenames)
        return sorted(files)

    def missing_target_message(self, label: Label, with_files: bool = False) -> str:
        return f"target '{label}' does not exist{self.nearest_targets(label, with_files)}"

    def nearest_targets(self, label: Label, with_files: bool = False) -> str:
        """A did-you-mean hint naming the existing targets closest to `label` (`with_files`: and
        the package's source files, for commands that take those too)."""
        package = self.package(label.package)
        files = self.package_files(label.package) if with_files else []
        # Compare names, not whole labels: the shared '//pkg:' prefix would make every target close.
        hint = did_you_mean(label.name, (*package.targets, *package.outputs, *files))
        # Then show each suggestion as a full label (a target name cannot contain a quote).
        return re.sub(r"'([^']*)'", lambda m: f"'{Label(label.package, m.group(1))}'", hint)

    def read_source(self, path: str) -> str | None:
        """A workspace file's text (None if it does not exist); a later edit invalidates analysis."""
        file = self.root / path
        if not self.observed.is_file(file):
            return None
        return self.observed.read_text(file)

    # ---- source positions -------------------------------------------------------------------

    def find_string(self, location: Location, text: str) -> Location:
        """The position of the string literal `text` at or after `location`, for precise errors."""
        lines = self._source_lines(location.file)
        for quote in ('"', "'"):
            needle = f"{quote}{text}{quote}"
            for index in range(location.line - 1, len(lines)):
                column = lines[index].find(needle)
                if column >= 0:
                    return Location(location.file, index + 1, column + 1)
        return location

    def _source_lines(self, file: str) -> list[str]:
        if file not in self._lines:
            try:
                self._lines[file] = (self.root / file).read_text(encoding="utf-8").splitlines()
            except OSError:
                self._lines[file] = []
        return self._lines[file]

    def _call_location(self, stack: str) -> Location:
        frames = _FRAME.findall(stack)
        file, line = frames[-1] if frames else ("<unknown>", "1")
        lines = self._source_lines(file)
        text = lines[int(line) - 1] if int(line) <= len(lines) else ""
        return Location(file, int(line), len(text) - len(text.lstrip()) + 1)

    # ---- Starlark evaluation ----------------------------------------------------------------

    def _evaluate_build(self, name: str) -> Package:
        file = f"{name}/{BUILD_FILE}" if name else BUILD_FILE
        package = Package(name)
        self._current = package
        try:
            self._evaluate(file)
        finally:
            self._current = None
        return package

    def _new_module(self, file: str) -> sl.Module:
        module = sl.Module()
        module.add_callable("_mk_rule", self._rule_call)
        module.add_callable("glob", self._glob)
        module.add_callable("package_name", self._package_name)
        sl.eval(module, self._prelude, self._globals)
        return module

    def _evaluate(self, file: str) -> sl.Module:
        try:
            source = self.observed.read_text(self.root / file)
            depth.check(source)
        except (NotUtf8Error, depth.TooDeepError) as e:
            raise MkError(str(e), Location(file, e.line, 1)) from None
        self._lines[file] = source.splitlines()
        self._file_stack.append(file)
        try:
            module = self._new_module(file)
            ast = sl.parse(file, source)
            sl.eval_with(self._options, module, ast, self._globals, sl.FileLoader(self._load_bzl))
            return module
        except sl.StarlarkError as e:
            if self._out_of_time():
                raise MkError(f"evaluating BUILD files took more than {self._seconds:g} s (load_seconds in mk.toml); "
                              f"stopped in {file}") from None
            raise self._translate(e) from None
        finally:
            self._file_stack.pop()

    def _out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _translate(self, error: sl.StarlarkError) -> MkError:
        pending, self._pending = self._pending, None
        match = _STARLARK_SPAN.search(str(error))
        span = (
            Location(match.group(2), int(match.group(3)), int(match.group(4))) if match else None
        )
        if pending is not None:
            return pending if pending.location else MkError(pending.message, span)
        message = match.group(1).replace("`", "'") if match else str(error).strip()
        message = message.removeprefix("Parse error: ")
        if span is not None and span.file in self._lines:
            message, span = syntax.readable(message, span, "\n".join(self._lines[span.file]) + "\n")
        return MkError(message, span)

    def _fail(self, message: str, location: Location | None = None) -> MkError:
        """Record an error to report instead of Starlark's wrapping of it, and return it."""
        self._pending = MkError(message, location)
        return self._pending

    def _load_bzl(self, module_id: str) -> sl.FrozenModule:
        requester = self._file_stack[-1]
        requester_package = os.path.dirname(requester)
        try:
            label = Label.parse(module_id, requester_package)
        except LabelError as e:
            raise self._fail(f"load(): {e}") from None
        file = f"{label.package}/{label.name}".lstrip("/")
        if not file.endswith(".bzl"):
            raise self._fail(f"load(): '{module_id}' is not a .bzl file")
        if file in self._file_stack:
            cycle = " -> ".join([*self._file_stack[self._file_stack.index(file):], file])
            raise self._fail(f"load() cycle: {cycle}")
        if not self.observed.is_file(self.root / file):
            raise self._fail(f"load(): file '{file}' does not exist (from '{module_id}')")
        if file not in self._bzl_cache:
            try:
                module = self._evaluate(file)
            except MkError as e:
                self._pending = e
                raise
            self._bzl_cache[file] = module.freeze()
        return self._bzl_cache[file]

    def _package_name(self) -> str:
        return self._require_package("package_name()").name

    def _require_package(self, what: str) -> Package:
        if self._current is None:
            raise self._fail(f"{what} can only be called while a BUILD file is being loaded")
        return self._current

    def _glob(
        self, include: list[str], exclude: list[str] | None = None, allow_empty: bool = True
    ) -> list[str]:
        package = self._require_package("glob()")
        for pattern in (*include, *(exclude or [])):
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise self._fail(f"glob(): pattern '{pattern}' must stay inside the package")
        matchers = [glob_regex(p) for p in include]
        excluders = [glob_regex(p) for p in exclude or []]
        found = [
            f for f in self.package_files(package.name)
            if any(m.fullmatch(f) for m in matchers) and not any(x.fullmatch(f) for x in excluders)
        ]
        if not found and not allow_empty:
            raise self._fail(f"glob({include}) matched no files and allow_empty is False")
        return found

    # ---- rule calls -------------------------------------------------------------------------

    def _rule_call(self, kind: str, stack: str, kwargs: dict[str, object]) -> None:
        location = self._call_location(stack)
        package = self._require_package(f"{kind}()")
        rule = self.rules[kind]
        name = kwargs.get("name")
        if not isinstance(name, str):
            raise self._fail(f"{kind}() needs a 'name' string attribute", location)
        try:
            label = Label.parse(f"//{package.name}:{name}")
        except LabelError as e:
            raise self._fail(f"{kind}(): {e}", location) from None
        attrs = self._check_attrs(rule, label, kwargs, location)
        if name in package.targets:
            first = package.targets[name].location
            raise self._fail(f"duplicate target '{name}' in //{package.name} (first defined at {first})", location)
        if name in package.outputs:
            raise self._fail(f"target '{name}' has the name of an output of :{package.outputs[name]}", location)
        for out in _declared_outputs(rule, attrs):
            self._register_output(package, name, out, location)
        from_settings = frozenset(a.name for a in rule.attrs if a.setting and kwargs.get(a.name) is None
                                  and self._setting(a.setting) is not None)
        package.targets[name] = Target(label, rule, attrs, location, from_settings)

    def _check_attrs(
        self, rule: Rule, label: Label, kwargs: dict[str, object], location: Location
    ) -> dict[str, object]:
        known = {a.name for a in rule.all_attrs()}
        for key in kwargs:
            if key not in known:
                hint = did_you_mean(key, known)
                raise self._fail(f"{rule.name} {label}: unknown attribute '{key}'{hint}", location)
        attrs: dict[str, object] = {}
        for attr in rule.all_attrs():
            value = kwargs.get(attr.name)
            if value is None:
                if attr.mandatory:
                    raise self._fail(f"{rule.name} {label}: missing mandatory attribute '{attr.name}'", location)
                value = attr.default
                if attr.setting is not None and (setting := self._setting(attr.setting)) is not None:
                    value = attr.type.value_of(setting)
            elif not attr.type.accepts(value):
                raise self._fail(
                    f"{rule.name} {label}: attribute '{attr.name}' must be {_a_value_of(attr.type.name)}, "
                    f"got {_starlark_type(value)}",
                    location,
                )
            else:
                try:
                    value = attr.type.value_of(value)
                except ValueError as e:
                    raise self._fail(f"{rule.name} {label}: attribute '{attr.name}': {e}", location) from None
            attrs[attr.name] = value
        return attrs

    def _setting(self, name: str) -> object:
        return getattr(self.settings, name) if hasattr(self.settings, name) else self.settings.get(name)

    def _register_output(self, package: Package, owner: str, out: str, location: Location) -> None:
        if not out or out.startswith("/") or any(p in ("", ".", "..") for p in out.split("/")):
            raise self._fail(f"output '{out}' of :{owner} must be a relative path inside the package", location)
        if out in package.outputs or out in package.targets:
            other = package.outputs.get(out, out)
            raise self._fail(f"output '{out}' of :{owner} is already declared by :{other}", location)
        if self.observed.is_file(self.root / package.name / out):
            path = f"{package.name}/{out}".lstrip("/")
            raise self._fail(f"output '{out}' of :{owner} would shadow the source file '{path}'", location)
        package.outputs[out] = owner


def _declared_outputs(rule: Rule, attrs: dict[str, object]) -> list[str]:
    return [out for attr in rule.attrs if attr.type.holds_outputs for out in output_names(attrs[attr.name])]


_TYPE_NAMES: dict[type, str] = {str: "string", bool: "bool", int: "int", list: "list", dict: "dict"}


def _a_value_of(type_name: str) -> str:
    """'a string', 'an int', but 'one of 'x', 'y''."""
    return type_name if type_name.startswith("one of") else a_or_an(type_name)


def _starlark_type(value: object) -> str:
    """The value's type, and for a list or dict whose entries are not all strings, the first that is not:
    'list whose entry 2 is an int' says more than 'list'."""
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    entries: list[tuple[str, object]] = []
    if isinstance(value, list):
        entries = [(f"entry {i + 1}", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        entries = [(f"key {k!r}", k) if not isinstance(k, str) else (f"value for {k!r}", v) for k, v in value.items()]
    wrong = next(((where, v) for where, v in entries if not isinstance(v, str)), None)
    if wrong is None:
        return name
    kind = _TYPE_NAMES.get(type(wrong[1]), type(wrong[1]).__name__)
    return f"{name} whose {wrong[0]} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _skipped_dir(parent_rel: str, name: str) -> bool:
    return name.startswith(".") or (parent_rel == "." and name == OUTPUT_DIR)
