"""The build-time check of an image's commands: each `services` and `onboot` command must start a
program the booted image has, so that a misspelt `/usr/sbin/ngnix` fails the build, not the boot.

A command's program is its first word, after variable assignments and `exec`, as busybox init
and sh see it. A path is looked up in the root tree, following symlinks inside it; a bare name on
the image's PATH, or among the applets of its busybox, which /init links at boot (`busybox
--install -s`). What the shell decides only when it runs (a builtin, a keyword, a subshell, an
expansion) is not judged: the check names what is certainly missing, and never refuses a
command that could run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
import shlex
import types
from collections.abc import Sequence
from dataclasses import dataclass

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree
from mk.engine.errors import did_you_mean
from mk.rules.init import BUSYBOX, PATH

_SEARCHED = tuple(folder.strip("/") for folder in PATH.split(":"))
_SEARCHED_SHOWN = ", ".join(f"/{f}" for f in _SEARCHED[:-1]) + f" or /{_SEARCHED[-1]}"
# busybox ash's builtins and the shell's reserved words: never a program looked up on PATH.
_BUILTINS = frozenset({
    ".", ":", "[", "[[", "alias", "bg", "break", "cd", "chdir", "command", "continue", "echo", "eval", "exec",
    "exit", "export", "false", "fg", "getopts", "hash", "help", "history", "jobs", "kill", "let", "local", "printf",
    "pwd", "read", "readonly", "return", "set", "shift", "source", "test", "times", "trap", "true", "type",
    "ulimit", "umask", "unalias", "unset", "wait",
})
_KEYWORDS = frozenset({"!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if",
                       "in", "select", "then", "time", "until", "while"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_DECIDED_AT_RUN_TIME = re.compile(r"[$`*?\[{~]")  # expansions and globs
_OPERATORS = "();<>|&"
# busybox's applet_names: one string of NUL-separated names, sorted (busybox bisects it). Applet
# names are lower case: a static binary's libc holds sorted runs of upper-case names too (the
# environment variables it drops for setuid programs), which are not applets.
_NAME_RUN = re.compile(rb"(?:[a-z0-9_.+\[\]-]{1,64}\x00){20,}")
_MIN_APPLETS = 20
_MAX_LINKS = 40  # Linux's limit (ELOOP)
_SHEBANG_BYTES = 256  # what Linux reads of a script's #! line


def program(command: str) -> str | None:
    """The program `command` starts, or None when that is a builtin, a keyword, or known only when
    the shell runs it."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=_OPERATORS)
    lexer.whitespace_split = True
    lexer.commenters = ""  # '#' starts a comment only at the start of a word (checked below)
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: the shell says so when it runs it
        return None
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    if words[:1] == ["exec"]:
        words.pop(0)
    if not words:
        return None
    word = words[0]
    if word in _BUILTINS or word in _KEYWORDS or word[0] in _OPERATORS or word.startswith(("#", "-")):
        return None
    if _DECIDED_AT_RUN_TIME.search(word):
        return None
    if word.isdigit() and len(words) > 1 and words[1][0] in "<>":  # a redirection: 2>/dev/null cmd
        return None
    return word


def busybox_applets(binary: bytes) -> frozenset[str] | None:
    """The applets a busybox binary provides: the longest sorted run of names in it is its
    applet_names table. None when it holds no such table (then nothing is known)."""
    best: list[bytes] = []
    for run in _NAME_RUN.finditer(binary):
        names = run.group().split(b"\0")[:-1]
        start = 0
        for index in range(1, len(names) + 1):
            if index == len(names) or names[index] <= names[index - 1]:
                if index - start > len(best):
                    best = names[start:index]
                start = index
    return frozenset(name.decode() for name in best) if len(best) >= _MIN_APPLETS else None


@functools.cache
def _applets_kind() -> str:
    """The kind of fact busybox's applets are remembered as. It names the code that finds them, so
    that applets an older scan remembered are not used (a digest of the code, not of the source
    files: a process of its own would read those for every build)."""
    material = repr((_code_material(busybox_applets.__code__), _NAME_RUN.pattern, _MIN_APPLETS)).encode()
    return f"busybox-applets-{hashlib.blake2b(material, digest_size=8).hexdigest()}"


def _code_material(code: types.CodeType) -> object:
    """What a function's code does, the same in every process (a code object's repr holds its address)."""
    consts = tuple(_code_material(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.co_code, code.co_names, consts


def _stored_applets(cas: ContentStore, digest: str, size: int) -> frozenset[str] | None:
    """busybox_applets of a stored binary, scanned once and remembered by its digest: an image's
    checks and bundles each look at the same busybox, and every build of an image meets it again."""

    def scanned() -> bytes:
        applets = busybox_applets(cas.read_bytes(digest, size))
        return json.dumps(None if applets is None else sorted(applets)).encode()

    names = json.loads(cas.facts.learn(_applets_kind(), digest, scanned))
    return None if names is None else frozenset(names)


def check_commands(tree: Tree, cas: ContentStore, services: Sequence[str], onboot: Sequence[str]) -> list[str]:
    """One line for each command whose program the image certainly lacks, naming the command."""
    image = RootView(tree, cas)
    problems = []
    for what, commands in (("service", services), ("onboot command", onboot)):
        for command in commands:
            # busybox init reads a service's leading '-' as "a login shell": the program follows it.
            word = program(command[1:] if what == "service" and command.startswith("-") else command)
            reason = image.why_not(word) if word else None
            if reason:
                problems.append(f"{what} '{command}': {reason}")
    return problems


@dataclass(frozen=True)
class _Found:
    path: str  # relative to the root, symlinks followed
    entry: Entry | None  # None: nothing is there
    link: str = ""  # the link text, when the path named was a symlink
    loop: bool = False


class RootView:
    """A root filesystem tree as a booted system sees it: paths resolve through its symlinks."""

    def __init__(self, tree: Tree, cas: ContentStore) -> None:
        self.entries = {e.path: e for e in tree.entries}
        self.cas = cas
        busybox = self.resolve(BUSYBOX).entry
        is_file = busybox is not None and busybox.kind is Kind.FILE
        self.applets = _stored_applets(cas, busybox.digest, busybox.size) if busybox and is_file else None

    def resolve(self, path: str) -> _Found:
        """What `path` names, with the tree as the root filesystem (as the kernel resolves it)."""
        pending = [part for part in reversed(path.split("/")) if part]  # a stack: the next part last
        done: list[str] = []
        links, link = 0, ""
        while pending:
            part = pending.pop()
            if part in (".", ".."):
                if part == ".." and done:
                    done.pop()
                continue
            entry = self.entries.get("/".join([*done, part]))
            if entry is None or (pending and entry.kind not in (Kind.DIR, Kind.SYMLINK)):
                return _Found("/".join([*done, part, *reversed(pending)]), None, link)
            if entry.kind is Kind.SYMLINK:
                links += 1
                if links > _MAX_LINKS:
                    return _Found(path, None, loop=True)
                link = link or (entry.target if not pending else "")
                if entry.target.startswith("/"):
                    done = []
                pending.extend(part for part in reversed(entry.target.split("/")) if part)
                continue
            done.append(part)
        entry = self.entries.get("/".join(done))
        if entry is not None and entry.kind is Kind.HARDLINK:
            entry = self.entries.get(entry.target)
        return _Found("/".join(done), entry, link)

    def read(self, path: str) -> bytes | None:
        """The content of the file at `path`, or None when no file is there."""
        entry = self.resolve(path).entry
        return self.cas.read_bytes(entry.digest, entry.size) if entry and entry.kind is Kind.FILE else None

    def why_not(self, word: str) -> str | None:
        """Why the image cannot start `word`, or None when it can (or might)."""
        if "/" in word:
            return self._why_not_path(word, posixpath.join("/", word))
        found_any = False
        for folder in _SEARCHED:
            found = self.resolve(f"{folder}/{word}")
            if found.entry is not None:
                found_any = True
                if self._runnable(found.entry):
                    return self._why_not_interpreter(f"/{folder}/{word}", found.entry)
        if found_any or self.applets is None or word in self.applets:
            return None  # a file it cannot run is only a guess at which one PATH would meet
        candidates = {*self.applets, *(name for folder in _SEARCHED for name in self._programs_in(folder))}
        return f"{word} is not in {_SEARCHED_SHOWN}, nor a busybox applet{did_you_mean(word, candidates)}"

    def _why_not_path(self, shown: str, path: str, scripts: bool = True) -> str | None:
        found = self.resolve(path)
        if found.loop:
            return f"{shown} is a loop of symlinks"
        entry = found.entry
        if entry is None:
            folder, name = posixpath.split(found.path)
            if folder in _SEARCHED and (self.applets is None or name in self.applets):
                return None  # /init's `busybox --install -s` links it
            if found.link:
                return f"{shown} is not in the image (a symlink to {found.link}, which is missing)"
            within = posixpath.dirname(shown) + "/"
            return f"{shown} is not in the image{did_you_mean(name, self._programs_in(folder), within=within)}"
        if entry.kind is Kind.DIR:
            return f"{shown} is a directory"
        if entry.kind is not Kind.FILE:
            return f"{shown} is not a regular file"
        if not self._runnable(entry):
            return f"{shown} is not executable (mode {entry.mode:04o})"
        return self._why_not_interpreter(shown, entry) if scripts else None

    def _why_not_interpreter(self, shown: str, entry: Entry) -> str | None:
        """For a script: why the image cannot start the interpreter its #! line names."""
        # Remembered by the file's digest: every build of the image checks the same programs.
        head = self.cas.facts.learn(f"head-{_SHEBANG_BYTES}", entry.digest,
                                    lambda: self.cas.read_bytes(entry.digest, entry.size)[:_SHEBANG_BYTES])
        words = head[2:].split(b"\n", 1)[0].split() if head.startswith(b"#!") else []
        interpreter = words[0].decode(errors="replace") if words else ""
        if not interpreter.startswith("/"):
            return None
        reason = self._why_not_path(interpreter, interpreter, scripts=False)
        return f"{shown} starts with #!{interpreter}; {reason}" if reason else None

    def _programs_in(self, folder: str) -> list[str]:
        """The names of what could be a program in `folder` (for suggestions)."""
        prefix = self.resolve(folder).path + "/"
        return [e.path[len(prefix):] for e in self.entries.values()
                if e.path.startswith(prefix) and "/" not in e.path[len(prefix):] and e.kind is not Kind.DIR]

    @staticmethod
    def _runnable(entry: Entry) -> bool:
        return entry.kind is Kind.FILE and bool(entry.mode & 0o111)
