"""The sandbox every command action runs in: bubblewrap, with a toolchain tree as its root.

What a command sees, and nothing more:
- the toolchain: its tree, written out once (see `mk.cache.toolchains`), bound read-only as the
  root. With `toolchain = "host"` the root is an empty read-only tmpfs holding the host's `/usr`
  and its merged-/usr links instead, and never the host's `/etc`;
- `/mk/execroot`, its working directory: the declared inputs at their workspace-relative paths,
  a tree input as the folder it describes (written out once, like a toolchain). Only the folders
  of declared outputs are writable there, and the inputs in them are not;
- a private, writable `/tmp` (also `$HOME`); a minimal `/dev` (null, zero, full, random,
  urandom, the fd links and a tmpfs `/dev/shm`), and `/proc`;
- no network, and user, pid, ipc and uts namespaces of its own: it runs as uid and gid 1000 on
  a host named `mk`. Not /home, /root, /etc, the workspace or the cache. (No cgroup namespace:
  making one costs over a millisecond per action, and a build step has no use for its cgroup.)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mk.engine.errors import MkError
from mk.engine.platforms import host_platform

EXECROOT = "/mk/execroot"
UID = GID = 1000
HOSTNAME = "mk"
# The host directories that make up a host toolchain: /usr and the links (or folders) around it.
_HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

_INSTALL = "install it (Debian: apt-get install bubblewrap)"
_NAMESPACES = (
    "the kernel refuses unprivileged user namespaces; enable them (Debian: sysctl -w "
    "kernel.unprivileged_userns_clone=1; elsewhere: sysctl -w user.max_user_namespaces=15000)"
)


class SandboxUnavailable(MkError):
    pass


@dataclass(frozen=True)
class Layout:
    """Where one action's sandbox comes from on the host."""

    toolchain: Path | None  # a materialised toolchain tree; None: the host's /usr
    execroot: Path
    tmp: Path
    inputs: tuple[str, ...]  # workspace-relative paths under execroot
    output_dirs: tuple[str, ...]  # the folders (under execroot) of the declared outputs
    trees: tuple[tuple[str, Path], ...] = ()  # tree inputs: (path under execroot, written-out folder)


def arguments(layout: Layout) -> list[str]:
    """bubblewrap's arguments for `layout`, up to (not including) the command."""
    args = [
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
        "--die-with-parent", "--new-session",
        "--uid", str(UID), "--gid", str(GID), "--hostname", HOSTNAME,
    ]
    if layout.toolchain is None:
        for kind, name, source in _host_root():
            args += ["--symlink", source, f"/{name}"] if kind == "symlink" else ["--ro-bind", source, f"/{name}"]
    else:  # one mount: the written-out tree has the mount points below (see mk.cache.toolchains)
        args += ["--ro-bind", str(layout.toolchain), "/"]
    args += [*_DEV, "--proc", "/proc", "--bind", str(layout.tmp), "/tmp"]
    args += ["--ro-bind", str(layout.execroot), EXECROOT]
    writable = sorted(set(layout.output_dirs))
    for folder in writable:
        if folder:
            args += ["--bind", str(layout.execroot / folder), f"{EXECROOT}/{folder}"]
        else:  # an output at the top of the workspace
            args += ["--bind", str(layout.execroot), EXECROOT]
    for path in layout.inputs:  # inputs inside a writable folder stay read-only
        if _inside_any(path, writable):
            args += ["--ro-bind", str(layout.execroot / path), f"{EXECROOT}/{path}"]
    for path, written_out in layout.trees:
        args += ["--ro-bind", str(written_out), f"{EXECROOT}/{path}"]
    args += ["--chdir", EXECROOT]
    if layout.toolchain is None:
        args += ["--remount-ro", "/"]  # the empty root holding the host's /usr and the mount points
    return args


# A minimal /dev, made by hand: bubblewrap's --dev also mounts a devpts and more, which costs about
# a millisecond per action that no build step needs.
_DEV = (
    "--tmpfs", "/dev",
    *(arg for node in ("null", "zero", "full", "random", "urandom") for arg in ("--dev-bind", f"/dev/{node}",
                                                                               f"/dev/{node}")),
    *(arg for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                               ("stderr", "/proc/self/fd/2")) for arg in ("--symlink", target, f"/dev/{name}")),
    "--tmpfs", "/dev/shm",
)


def _inside_any(path: str, folders: Sequence[str]) -> bool:
    return any(folder == "" or path.startswith(folder + "/") for folder in folders)


@functools.cache
def _host_root() -> tuple[tuple[str, str, str], ...]:
    entries = []
    for name in _HOST_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            entries.append(("symlink", name, os.readlink(path)))
        elif os.path.isdir(path):
            entries.append(("bind", name, path))
    return tuple(entries)


@functools.cache
def bubblewrap() -> str:
    """The path of `bwrap`, checked once per process to work here; else one clear error."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(f"mk runs every command in a bubblewrap sandbox, and bwrap is not on PATH: {_INSTALL}")
    try:
        probe = subprocess.run(
            [found, "--unshare-user", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "true"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxUnavailable(f"mk cannot start its sandbox ({found}): {e}") from None
    if probe.returncode != 0:
        said = probe.stderr.decode("utf-8", "replace").strip()
        why = _NAMESPACES if re.search(r"namespace|uid map|Operation not permitted", said) else _INSTALL
        raise SandboxUnavailable(f"mk cannot start its sandbox ({found} said: {said}): {why}")
    return found


_NOT_FOUND = re.compile(r"(?:^|: )([\w.+-]+): (?:command not found|No such file or directory)$", re.M)


_FOREIGN_BINARY = re.compile(r"Exec format error|cannot execute binary file")


def failure_hint(stderr: str, toolchain: str, target_platform: str | None = None) -> str:
    """A line on what the sandbox hides, for a failed command; `toolchain` names its root, and
    `target_platform` the platform its target was configured for, if it was."""
    missing = _NOT_FOUND.search(stderr)
    hint = ""
    if target_platform is not None and target_platform != str(host_platform()) and _FOREIGN_BINARY.search(stderr):
        return (f"  hint: the command ran a program built for {target_platform}, the target platform; commands run "
                f"on the exec platform, {host_platform()}, and mk does not emulate another: a tool a command runs "
                "must come from its toolchain (built for the host), not from a target built for the image\n")
    if missing and "/" not in missing.group(1):
        hint = f"'{missing.group(1)}' is not in {toolchain}; "
    elif "Read-only file system" in stderr or "Permission denied" in stderr:
        hint = "only the folders of declared outputs and /tmp are writable, and inputs are read-only; "
    return (f"  hint: {hint}the command ran in mk's sandbox, which holds only its declared inputs, {toolchain} "
            "and /tmp, with no network (mk build --sandbox-debug keeps the sandbox and shows how it was made)\n")
