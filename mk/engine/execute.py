"""Runs one action in a private scratch directory and stores its outputs in the content store.

Inputs are materialised at their workspace-relative paths; a command runs in the sandbox (see
`sandbox`), which shows it those and its toolchain, and nothing else. A command sees a tree input
as the folder it describes, and makes a tree output by filling a folder at its path, which is
read into a tree (see `mk.cache.tree_capture`). Outputs are checked, stored, and only then
described by an action result, so an interrupted action leaves no trace but its scratch
directory, which is removed on the way out (or by the next build if this process was killed).
What a command printed is its log, kept in the content store whether it succeeded or failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mk.cache.action_cache import ActionResult, OutputFile
from mk.cache.cas import ContentStore, digest_file
from mk.cache.fixed_outputs import FixedOutputs
from mk.cache.fsutil import CacheFileError
from mk.cache.local import LocalCache, remove_tree
from mk.cache.stat_cache import FileDigest
from mk.cache.toolchains import Toolchains
from mk.engine import sandbox
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.cache_parts import SANDBOX_DEBUG
from mk.engine.errors import MkError
from mk.engine.reaper import Reaper

if TYPE_CHECKING:
    from mk.cache.remote import RemoteCache

FIXED_PATH = "/usr/local/bin:/usr/bin:/bin"
HOST_TOOLCHAIN = "the host's /usr (toolchain = \"host\")"
_STDERR_TAIL = 4000


def _indented(script: str) -> str:
    """A multi-line script under the `command:` line of a failure, its later lines indented to match."""
    return script.strip("\n").replace("\n", "\n" + " " * len("  command: "))


def copyfile(source: Path, target: Path) -> None:
    import shutil  # only when an action runs

    shutil.copyfile(source, target)


class ActionFailed(MkError):
    """`log`: the digest of what the failed command printed, kept in the content store ("" if none)."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


def command_environment(action: Action, jobs: int) -> dict[str, str]:
    """The whole environment of a command: fixed, plus what its action declares. `jobs`: the -j
    slots it got, in $MK_JOBS (never in a key: outputs must not depend on it)."""
    declared_env = action.params.get("env", {})
    assert isinstance(declared_env, Mapping)
    return {
        "PATH": FIXED_PATH,
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "MK_JOBS": str(jobs),
        **{str(k): str(v) for k, v in declared_env.items()},
    }


@dataclass(frozen=True)
class Ran:
    """What a command did: its exit code (minus the signal that killed it), stdout and stderr."""

    code: int
    stdout: bytes
    stderr: bytes


def run_sandboxed(command: Sequence[str], env: Mapping[str, str], layout: sandbox.Layout,
                  processes: RunningProcesses) -> Ran:
    """Run `command` in the sandbox `layout` describes (its tmp is made here). Raises ValueError (a
    NUL byte) or OSError (cannot start)."""
    layout.tmp.mkdir()
    argv = [sandbox.bubblewrap(), *sandbox.arguments(layout), "--", *command]
    # Its output goes to files in memory: two files made and removed on disk for every command
    # cost this machine's file system more than the bytes do.
    stdout, stderr = os.memfd_create("mk-stdout"), os.memfd_create("mk-stderr")
    try:
        proc = subprocess.Popen(argv, cwd=layout.execroot, env=dict(env), stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, umask=0o022, start_new_session=True)
        processes.add(proc)
        try:
            code = proc.wait()
        finally:
            processes.remove(proc)
        return Ran(code, _all_of(stdout), _all_of(stderr))
    finally:
        os.close(stdout)
        os.close(stderr)


def _all_of(fd: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        return f.read()


class RunningProcesses:
    """Process groups of running commands, so Ctrl-C can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self.cancelled = threading.Event()
        self._reaper = Reaper()  # if mk is killed outright, it kills them

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        self._reaper.watch(proc.pid)  # (the command leads a process group of its own)
        with self._lock:
            self._procs.add(proc)
        if self.cancelled.is_set():
            self.kill_all()

    def remove(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)
        self._reaper.forget(proc.pid)

    def kill_all(self) -> None:
        self.cancelled.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


class Executor:
    def __init__(
        self, cache: LocalCache, cas: ContentStore, workspace_root: Path,
        source_urls: Callable[[str], tuple[str, ...]], remote: RemoteCache | None = None, sandbox_debug: bool = False,
        jobs: int = 1,
    ) -> None:
        self.cache = cache
        self.cas = cas  # the local store, reading what it lacks from this build's remote cache (if any)
        self.root = workspace_root
        self.source_urls = source_urls
        self.fixed_outputs = FixedOutputs(cas, remote)
        self.processes = RunningProcesses()
        self.toolchains = Toolchains(cache, cas)
        self.sandbox_debug = sandbox_debug  # keep each command's sandbox and show how it was made
        self.jobs = jobs  # the build's -j: a command is told in $MK_JOBS how many slots of it are its own
        self.warnings: list[str] = []  # what in-process actions warned of, as shown, in the order they ran

    def run(self, action: Action, key: str, inputs: Mapping[str, FileDigest]) -> ActionResult:
        with self.cache.scratch_dir(key[:20], remove_later=True) as scratch:
            try:
                return self._run_in(action, inputs, scratch)
            finally:
                if self.sandbox_debug and action.command is not None:
                    self._keep_sandbox(action, scratch)

    def _run_in(self, action: Action, inputs: Mapping[str, FileDigest], scratch: Path) -> ActionResult:
        execroot = scratch / "execroot"
        # The toolchain is the root; a function that reads its inputs through the store gets none written out.
        staged = tuple(a for a in action.inputs if a != action.toolchain) if action.staged_inputs else ()
        # A command sees each tree input as a folder, bound from its written-out copy.
        folders = tuple(a for a in staged if a.is_tree) if action.command is not None else ()
        self.cas.prefetch(inputs[a.path].digest for a in staged if not a.is_source and a not in folders)
        # Each folder is made once (inputs share them), by its full path: pathlib's mkdir would
        # try every input's folder again and look at it.
        made: set[str] = set()
        if staged or action.command is not None:
            execroot.mkdir()
            made.add(str(execroot))
        for artifact in staged:
            if artifact in folders:
                (execroot / artifact.path).mkdir(parents=True)
            else:
                _make_folder(f"{execroot}/{os.path.dirname(artifact.path)}", made)
                self._materialise(artifact.path, artifact.is_source, inputs[artifact.path], execroot,
                                  action.command is None)
        if action.command is not None:
            for artifact in action.outputs:
                _make_folder(f"{execroot}/{os.path.dirname(artifact.path)}", made)
            toolchain = action.toolchain
            root = None if toolchain is None else self._written_out(action, inputs[toolchain.path].digest, True)
            trees = tuple((a.path, self._written_out(action, inputs[a.path].digest, False)) for a in folders)
            layout = sandbox.Layout(root, execroot, scratch / "tmp", tuple(a.path for a in staged),
                                    tuple(os.path.dirname(a.path) for a in action.outputs), trees)
            log = self._run_command(action, layout, scratch)
            written = {a.path: execroot / a.path for a in action.outputs}
        else:
            # mk's own function writes each output to a file of its own in the scratch folder: no
            # folders to make (each costs a fifth of a millisecond here, made and removed again).
            written = {a.path: scratch / f"out{i}-{os.path.basename(a.path)}" for i, a in enumerate(action.outputs)}
            log = self._run_function(action, inputs, execroot, written, scratch)
        present: set[str] = set()  # blobs found in the store: an image's segments repeat its root's files
        outputs = tuple(self._collect(action, a, written[a.path], present) for a in action.outputs)
        return ActionResult(outputs, 0, self.cas.put_bytes(log))

    def _materialise(self, path: str, is_source: bool, want: FileDigest, execroot: Path, only_read: bool) -> None:
        """`only_read`: mk's own function reads the file and never writes it, so a blob stored as
        it is may be linked in rather than copied (a command could write through the link)."""
        target = execroot / path
        if only_read and not is_source and not want.executable and self.cas.link_to(want.digest, target):
            return
        if is_source:
            copyfile(self.root / path, target)
            if digest_file(target) != want.digest:
                raise MkError(f"source file '{path}' changed while the build was running; run mk again")
        else:
            with open(target, "wb") as out:
                self.cas.write_to(want.digest, None, out, plain_file=True)
        os.chmod(target, 0o555 if want.executable else 0o444)

    def _written_out(self, action: Action, digest: str, toolchain: bool) -> Path:
        """The folder of a toolchain (with the sandbox's mount points) or of a tree input."""
        from mk.cache.tree import TreeError  # only when a command runs

        try:
            return self.toolchains.root_for(digest) if toolchain else self.toolchains.tree_for(digest)
        except TreeError as e:
            what = "its toolchain" if toolchain else "a tree it takes"
            raise ActionFailed(f"{action.describe()}: {what} is not a tree: {e}") from None
        except OSError as e:
            if isinstance(e, CacheFileError):  # it already says what and where
                raise
            raise ActionFailed(f"{action.describe()}: cannot write out its toolchain under "
                               f"{self.toolchains.root}: {e.strerror or e}") from None

    def _run_command(self, action: Action, layout: sandbox.Layout, scratch: Path) -> bytes:
        assert action.command is not None
        if self.sandbox_debug:
            import shlex

            argv = [sandbox.bubblewrap(), *sandbox.arguments(layout), "--", *action.command]
            print(f"mk: sandbox of {action.describe()}: {shlex.join(argv)}", file=sys.stderr)
        try:
            env = command_environment(action, action.slots(self.jobs))
            ran = run_sandboxed(action.command, env, layout, self.processes)
        except ValueError as e:  # a NUL byte in the command or the environment
            raise ActionFailed(f"{action.describe()} cannot run: its command holds a NUL byte ({e})") from None
        except OSError as e:
            size = sum(len(a) for a in action.command)
            raise ActionFailed(f"{action.describe()} cannot run its command ({size} bytes): "
                               f"{e.strerror or e}") from None
        code, out, err = ran.code, ran.stdout, ran.stderr
        if self.sandbox_debug:  # the kept sandbox shows them beside execroot/ and tmp/
            (scratch / "stdout").write_bytes(out)
            (scratch / "stderr").write_bytes(err)
        if self.processes.cancelled.is_set():
            raise ActionFailed(f"{action.describe()} was interrupted")
        if code != 0:
            log = self.cas.put_bytes(out + err)  # for `mk log`: a failed build's output is kept too
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            text = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
            toolchain = HOST_TOOLCHAIN if action.toolchain is None else f"the toolchain {action.toolchain.path}"
            if text.startswith("bwrap: execvp"):  # the sandbox was made, but holds no such program
                raise ActionFailed(f"{action.describe()} cannot run {action.command[0]}: {toolchain} does not "
                                   f"hold it ({text.strip()})", log)
            if text.startswith("bwrap: "):  # bubblewrap itself failed, before the command started
                raise ActionFailed(f"{action.describe()}: mk could not set up its sandbox: {text.strip()}", log)
            raise ActionFailed(
                f"{action.describe()} failed ({how})\n  command: {_indented(action.command[-1])}\n"
                + "".join(f"  | {line}\n" for line in text.splitlines())
                + sandbox.failure_hint(text, toolchain, action.platform), log
            )
        return out + err

    def _keep_sandbox(self, action: Action, scratch: Path) -> None:
        """--sandbox-debug: what the command left in its sandbox outlives the build."""
        import shutil

        kept = self.cache.root / SANDBOX_DEBUG.name / scratch.name
        remove_tree(kept)
        shutil.copytree(scratch, kept, symlinks=True)
        print(f"mk: the sandbox of {action.describe()} is kept in {kept} (execroot/, tmp/, stdout, stderr)",
              file=sys.stderr)

    def _run_function(self, action: Action, inputs: Mapping[str, FileDigest], execroot: Path,
                      outputs: Mapping[str, Path], scratch: Path) -> bytes:
        assert action.function is not None
        io = ActionIO(
            inputs={a.path: execroot / a.path for a in action.inputs},
            digests={a.path: inputs[a.path].digest for a in action.inputs},
            outputs=outputs,
            params=action.params,
            cas=self.cas,
            work=scratch / "work",
            fixed_outputs=self.fixed_outputs,
            source_urls=self.source_urls,
        )
        try:
            action.function(io)
        except (OSError, ValueError) as e:
            message = f"{action.describe()} failed: {e}"
            raise ActionFailed(message, self.cas.put_bytes(f"{message}\n".encode())) from e
        shown = [warning.shown(action) for warning in io.warnings]
        self.warnings += shown  # (one list.extend: atomic, as actions run on several threads)
        return "".join(f"{line}\n" for line in shown).encode()

    def _collect(self, action: Action, artifact: Artifact, file: Path, present: set[str]) -> OutputFile:
        path = artifact.path
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise ActionFailed(f"{action.describe()} did not create its declared output '{path}'") from None
        if artifact.is_tree and action.command is not None:
            return self._capture(action, artifact, file)
        if not stat.S_ISREG(st.st_mode):
            raise ActionFailed(f"{action.describe()}: output '{path}' is not a regular file")
        digest = self.cas.put_file(file, owned=True)  # scratch: nothing writes to it again
        output = OutputFile(path, digest, bool(st.st_mode & stat.S_IXUSR), artifact.is_tree)
        if artifact.is_tree:
            self._check_tree(action, output, present)
        return output

    def _capture(self, action: Action, artifact: Artifact, folder: Path) -> OutputFile:
        """A command's tree output: the folder it filled, read into a tree."""
        from mk.cache.tree import TreeError  # only when a command made a tree
        from mk.cache.tree_capture import capture

        if not folder.is_dir() or folder.is_symlink():
            raise ActionFailed(f"{action.describe()}: tree output '{artifact.path}' is not a folder; a command "
                               "makes a tree by filling a folder at its path")
        try:
            tree = capture(folder, self.cas)
        except TreeError as e:
            raise ActionFailed(f"{action.describe()}: tree output '{artifact.path}': {e}") from None
        except OSError as e:  # a file the command left unreadable, say
            where = os.path.relpath(e.filename, folder) if e.filename else "?"
            raise ActionFailed(f"{action.describe()}: tree output '{artifact.path}': cannot read '{where}': "
                               f"{e.strerror or e}") from None
        return OutputFile(artifact.path, self.cas.put_bytes(tree.encode()), False, True)

    def _check_tree(self, action: Action, output: OutputFile, present: set[str]) -> None:
        """A tree output must be a readable manifest whose every file is in the store: its result
        is then complete, and everything it references can be uploaded and kept together."""
        from mk.cache.tree import Tree, TreeError  # only when a tree was made

        try:
            tree = Tree.decode_shared(self.cas.read_bytes(output.digest))
        except TreeError as e:
            raise ActionFailed(f"{action.describe()}: output '{output.path}' is not a tree: {e}") from None
        digests = [e.digest for e in tree.files()]
        missing = next((d for d in digests if d not in present and not self.cas.obtainable(d)), None)
        if missing is not None:
            raise ActionFailed(f"{action.describe()}: tree '{output.path}' names blob {missing}, "
                               "which is not in the content store")
        present.update(digests)


def _make_folder(path: str, made: set[str]) -> None:
    """`mkdir -p path`, remembering in `made` what exists already."""
    path = path.rstrip("/")
    if path not in made:
        os.makedirs(path, exist_ok=True)
        made.add(path)
