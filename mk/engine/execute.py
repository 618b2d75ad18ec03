"""Runs one action in a private scratch directory and stores its outputs in the content store.

Inputs are materialised at their workspace-relative paths; a command runs in the sandbox (see
`sandbox`), which shows it those and its toolchain, and nothing else. Outputs are checked,
stored, and only then described by an action result, so an interrupted action leaves no trace
but its scratch directory, which is removed on the way out (or by the next build if this process
was killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from mk.cache.action_cache import ActionResult, OutputFile
from mk.cache.cas import ContentStore, digest_file
from mk.cache.fsutil import CacheFileError
from mk.cache.local import LocalCache, remove_tree
from mk.cache.stat_cache import FileDigest
from mk.cache.toolchains import Toolchains
from mk.engine import sandbox
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.cache_parts import SANDBOX_DEBUG
from mk.engine.errors import MkError
from mk.engine.reaper import Reaper

FIXED_PATH = "/usr/local/bin:/usr/bin:/bin"
HOST_TOOLCHAIN = "the host's /usr (toolchain = \"host\")"
_STDERR_TAIL = 4000


def copyfile(source: Path, target: Path) -> None:
    import shutil  # only when an action runs

    shutil.copyfile(source, target)


class ActionFailed(MkError):
    pass


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
        self, cache: LocalCache, cas: ContentStore, workspace_root: Path, source_url: Callable[[str], str],
        sandbox_debug: bool = False,
    ) -> None:
        self.cache = cache
        self.cas = cas  # the local store, reading what it lacks from this build's remote cache (if any)
        self.root = workspace_root
        self.source_url = source_url
        self.processes = RunningProcesses()
        self.toolchains = Toolchains(cache, cas)
        self.sandbox_debug = sandbox_debug  # keep each command's sandbox and show how it was made

    def run(self, action: Action, key: str, inputs: Mapping[str, FileDigest]) -> ActionResult:
        with self.cache.scratch_dir(key[:20]) as scratch:
            try:
                return self._run_in(action, inputs, scratch)
            finally:
                if self.sandbox_debug and action.command is not None:
                    self._keep_sandbox(action, scratch)

    def _run_in(self, action: Action, inputs: Mapping[str, FileDigest], scratch: Path) -> ActionResult:
        execroot = scratch / "execroot"
        execroot.mkdir()
        staged = tuple(a for a in action.inputs if a != action.toolchain)  # the toolchain is the root
        self.cas.prefetch(inputs[a.path].digest for a in staged if not a.is_source)
        for artifact in staged:
            self._materialise(artifact.path, artifact.is_source, inputs[artifact.path], execroot)
        for artifact in action.outputs:
            (execroot / artifact.path).parent.mkdir(parents=True, exist_ok=True)
        if action.command is not None:
            toolchain = action.toolchain
            root = None if toolchain is None else self._toolchain_root(action, inputs[toolchain.path].digest)
            layout = sandbox.Layout(root, execroot, scratch / "tmp", tuple(a.path for a in staged),
                                    tuple(os.path.dirname(a.path) for a in action.outputs))
            log = self._run_command(action, layout, scratch)
        else:
            log = self._run_function(action, execroot, scratch)
        outputs = tuple(self._collect(action, a, execroot) for a in action.outputs)
        return ActionResult(outputs, 0, self.cas.put_bytes(log))

    def _materialise(self, path: str, is_source: bool, want: FileDigest, execroot: Path) -> None:
        target = execroot / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_source:
            copyfile(self.root / path, target)
            if digest_file(target) != want.digest:
                raise MkError(f"source file '{path}' changed while the build was running; run mk again")
        else:
            with open(target, "wb") as out:
                self.cas.copy_to(want.digest, out)
        os.chmod(target, 0o555 if want.executable else 0o444)

    def _toolchain_root(self, action: Action, digest: str) -> Path:
        from mk.cache.tree import TreeError  # only when a command runs

        try:
            return self.toolchains.root_for(digest)
        except TreeError as e:
            raise ActionFailed(f"{action.describe()}: its toolchain is not a tree: {e}") from None
        except OSError as e:
            if isinstance(e, CacheFileError):  # it already says what and where
                raise
            raise ActionFailed(f"{action.describe()}: cannot write out its toolchain under "
                               f"{self.toolchains.root}: {e.strerror or e}") from None

    def _run_command(self, action: Action, layout: sandbox.Layout, scratch: Path) -> bytes:
        assert action.command is not None
        layout.tmp.mkdir()
        declared_env = action.params.get("env", {})
        assert isinstance(declared_env, Mapping)
        env = {
            "PATH": FIXED_PATH,
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            **{str(k): str(v) for k, v in declared_env.items()},
        }
        argv = [sandbox.bubblewrap(), *sandbox.arguments(layout), "--", *action.command]
        if self.sandbox_debug:
            import shlex

            print(f"mk: sandbox of {action.describe()}: {shlex.join(argv)}", file=sys.stderr)
        stdout_path, stderr_path = scratch / "stdout", scratch / "stderr"
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=layout.execroot,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    umask=0o022,
                    start_new_session=True,
                )
            except ValueError as e:  # a NUL byte in the command or the environment
                raise ActionFailed(f"{action.describe()} cannot run: its command holds a NUL byte ({e})") from None
            except OSError as e:
                size = sum(len(a) for a in action.command)
                raise ActionFailed(f"{action.describe()} cannot run its command ({size} bytes): "
                                   f"{e.strerror or e}") from None
            self.processes.add(proc)
            try:
                code = proc.wait()
            finally:
                self.processes.remove(proc)
        out, err = stdout_path.read_bytes(), stderr_path.read_bytes()
        if self.processes.cancelled.is_set():
            raise ActionFailed(f"{action.describe()} was interrupted")
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            text = err.decode("utf-8", "replace")[-_STDERR_TAIL:]
            toolchain = HOST_TOOLCHAIN if action.toolchain is None else f"the toolchain {action.toolchain.path}"
            if text.startswith("bwrap: execvp"):  # the sandbox was made, but holds no such program
                raise ActionFailed(f"{action.describe()} cannot run {action.command[0]}: {toolchain} does not "
                                   f"hold it ({text.strip()})")
            if text.startswith("bwrap: "):  # bubblewrap itself failed, before the command started
                raise ActionFailed(f"{action.describe()}: mk could not set up its sandbox: {text.strip()}")
            raise ActionFailed(
                f"{action.describe()} failed ({how})\n  command: {action.command[-1]}\n"
                + "".join(f"  | {line}\n" for line in text.splitlines())
                + sandbox.failure_hint(text, toolchain)
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

    def _run_function(self, action: Action, execroot: Path, scratch: Path) -> bytes:
        assert action.function is not None
        work = scratch / "work"
        work.mkdir()
        io = ActionIO(
            inputs={a.path: execroot / a.path for a in action.inputs},
            outputs={a.path: execroot / a.path for a in action.outputs},
            params=action.params,
            cas=self.cas,
            scratch=work,
            source_url=self.source_url,
        )
        try:
            action.function(io)
        except (OSError, ValueError) as e:
            raise ActionFailed(f"{action.describe()} failed: {e}") from e
        return b""

    def _collect(self, action: Action, artifact: Artifact, execroot: Path) -> OutputFile:
        path = artifact.path
        file = execroot / path
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            raise ActionFailed(f"{action.describe()} did not create its declared output '{path}'") from None
        if not stat.S_ISREG(st.st_mode):
            raise ActionFailed(f"{action.describe()}: output '{path}' is not a regular file")
        digest = self.cas.put_file(file)
        output = OutputFile(path, digest, bool(st.st_mode & stat.S_IXUSR), artifact.is_tree)
        if artifact.is_tree:
            self._check_tree(action, output)
        return output

    def _check_tree(self, action: Action, output: OutputFile) -> None:
        """A tree output must be a readable manifest whose every file is in the store: its result
        is then complete, and everything it references can be uploaded and kept together."""
        from mk.cache.tree import Tree, TreeError  # only when a tree was made

        try:
            tree = Tree.decode(self.cas.read_bytes(output.digest))
        except TreeError as e:
            raise ActionFailed(f"{action.describe()}: output '{output.path}' is not a tree: {e}") from None
        missing = next((e.digest for e in tree.files() if not self.cas.obtainable(e.digest)), None)
        if missing is not None:
            raise ActionFailed(f"{action.describe()}: tree '{output.path}' names blob {missing}, "
                               "which is not in the content store")
