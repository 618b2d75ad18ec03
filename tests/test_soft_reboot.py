"""The soft reboot's update (mk/rules/soft_reboot.py), offline: the difference between two initrds
written by mk's cpio writer, applied as the guest's agent applies it, gives the new tree; and
what makes a soft reboot fall back to a full one; the host's end of the agent's exchange."""

from __future__ import annotations

import socket
import stat
import threading
from pathlib import Path, PurePosixPath

import pytest

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree
from mk.rules.formats.cpio import write_cpio
from mk.rules.init import UPDATE_BLOCK
from mk.rules.soft_reboot import ArchiveError, Booted, Update, difference, read_index
from mk.rules.soft_reboot import Entry as Indexed
from mk.rules.vm_agent import READY_SECONDS, UPDATE_DRIVE_BYTES, Agent

MTIME = 1700000000


def _file(cas: ContentStore, path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, digest=cas.put_bytes(data), size=len(data))


def _write(path: Path, cas: ContentStore, *trees: list[Entry]) -> Path:
    """The trees as concatenated archives, as an image's initrd segments are."""
    with open(path, "wb") as out:
        for entries in trees:
            write_cpio(Tree.build(entries), cas, out, MTIME)
    return path


def _apply(old: dict[str, Indexed], update: Update, scratch: Path) -> dict[str, Indexed]:
    """What the guest's agent does with `update`: `rm -rf` each removed path, then unpack the
    archive over what is left (an entry replaces the path's)."""
    tree = dict(old)
    for removed in update.removed:
        for path in [p for p in tree if p == removed or p.startswith(removed + "/")]:
            del tree[path]
    archive = scratch / "update.cpio"
    archive.write_bytes(update.archive)
    for path, entry in read_index(archive).items():
        for parent in PurePosixPath(path).parents:
            assert str(parent) == "." or str(parent) in tree or str(parent) in update.written, path
        tree[path] = entry
    return tree


def _same_trees(got: dict[str, Indexed], want: dict[str, Indexed]) -> None:
    assert sorted(got) == sorted(want)
    different = [path for path in want if not got[path].same(want[path])]
    assert different == []


@pytest.fixture
def cas(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "cas")


def test_the_difference_applied_gives_the_new_tree(cas: ContentStore, tmp_path: Path) -> None:
    base = [
        _file(cas, "etc/motd", b"one\n"),
        _file(cas, "etc/kept", b"kept\n"),
        _file(cas, "etc/gone/deep", b"gone\n"),
        _file(cas, "usr/bin/tool", b"tool v1\n", 0o755),
        Entry("usr/bin/tool-alias", Kind.HARDLINK, 0o755, target="usr/bin/tool"),
        Entry("usr/lib/link", Kind.SYMLINK, 0o777, target="../bin/tool"),
        _file(cas, "becomes/dir", b"a file first\n"),
        Entry("dev/null", Kind.CHAR, 0o666, major=1, minor=3),
    ]
    top = [_file(cas, "etc/motd", b"the second segment's motd\n")]  # a later segment's entry counts
    new = [
        _file(cas, "etc/motd", b"two\n"),
        _file(cas, "etc/kept", b"kept\n"),
        _file(cas, "usr/bin/tool", b"tool v2\n", 0o755),
        Entry("usr/bin/tool-alias", Kind.HARDLINK, 0o755, target="usr/bin/tool"),
        Entry("usr/lib/link", Kind.SYMLINK, 0o777, target="../bin/other"),
        _file(cas, "becomes/dir/inside", b"now a folder\n"),
        _file(cas, "new/folder/file", b"new\n", 0o600),
        Entry("dev/null", Kind.CHAR, 0o666, major=1, minor=3),
    ]
    old_index = read_index(_write(tmp_path / "old.cpio", cas, base, top))
    assert old_index["etc/motd"].meta[5] == len(b"the second segment's motd\n")
    new_path = _write(tmp_path / "new.cpio", cas, new)
    update = difference(old_index, read_index(new_path), new_path)

    assert update.removed == ("becomes/dir", "etc/gone", "etc/gone/deep")
    assert "etc/kept" not in update.written and "dev/null" not in update.written
    # The hard-link group is written whole, its first name (with the data) first.
    assert update.written.index("usr/bin/tool") < update.written.index("usr/bin/tool-alias")
    # Each folder comes after everything written inside it, so that its mtime is the image's.
    for number, path in enumerate(update.written):
        later = update.written[number + 1:]
        assert not any(other.startswith(path + "/") for other in later), (path, later)
    assert {"etc", "usr/bin", "usr/lib", "becomes", "becomes/dir", "new", "new/folder"} <= set(update.written)
    _same_trees(_apply(old_index, update, tmp_path), read_index(new_path))


def test_nothing_changed_writes_an_empty_archive(cas: ContentStore, tmp_path: Path) -> None:
    tree = [_file(cas, "etc/motd", b"same\n")]
    old = _write(tmp_path / "old.cpio", cas, tree)
    new = _write(tmp_path / "new.cpio", cas, tree)
    update = difference(read_index(old), read_index(new), new)
    assert (update.removed, update.written) == ((), ())
    assert read_index(_write_bytes(tmp_path / "empty.cpio", update.archive)) == {}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_payload_is_whole_blocks_the_listing_first(cas: ContentStore, tmp_path: Path) -> None:
    update = Update(("etc/a", "etc/b"), (), b"x" * (UPDATE_BLOCK + 1))
    payload, removed, archive = update.payload()
    assert (removed, archive) == (1, 2)
    assert len(payload) == 3 * UPDATE_BLOCK
    assert payload[:UPDATE_BLOCK].rstrip(b"\n") == b"etc/a\netc/b"
    assert payload[UPDATE_BLOCK:UPDATE_BLOCK * 2 + 1] == b"x" * (UPDATE_BLOCK + 1)


def _booted(cas: ContentStore, tmp_path: Path, tree: list[Entry]) -> Booted:
    (tmp_path / "kernel").write_bytes(b"kernel 1")
    (tmp_path / "cmdline").write_text("console=ttyS0 panic=-1\n")
    return Booted.of(tmp_path / "kernel", tmp_path / "cmdline", _write(tmp_path / "booted.cpio", cas, tree))


def test_a_change_on_the_kernel_side_asks_for_a_full_reboot(cas: ContentStore, tmp_path: Path) -> None:
    module = "usr/lib/modules/6.1.0-mk/kernel/fs/overlayfs/overlay.ko"
    tree = [_file(cas, "etc/motd", b"one\n"), _file(cas, module, b"module 1"),
            _file(cas, "etc/mk/modules.load", f"/{module}\n".encode())]
    booted = _booted(cas, tmp_path, tree)
    kernel, cmdline = tmp_path / "kernel", tmp_path / "cmdline"
    assert booted.kernel_change(kernel, cmdline) is None
    cmdline.write_text("console=ttyS0 panic=-1 quiet\n")
    assert booted.kernel_change(kernel, cmdline) == "the kernel command line changed"
    kernel.write_bytes(b"kernel 2")
    assert booted.kernel_change(kernel, cmdline) == "the kernel changed"

    edited = _write(tmp_path / "edited.cpio", cas, [*tree[:1], _file(cas, module, b"module 2"), *tree[2:]])
    assert booted.update(edited) == f"the kernel's modules changed (/{module})"
    listed = _write(tmp_path / "listed.cpio", cas, [*tree[:2], _file(cas, "etc/mk/modules.load", b"\n")])
    assert booted.update(listed) == "the kernel's modules changed (/etc/mk/modules.load)"


def test_a_userspace_change_is_a_soft_reboot_and_becomes_the_booted_image(cas: ContentStore, tmp_path: Path) -> None:
    tree = [_file(cas, "etc/motd", b"one\n")]
    booted = _booted(cas, tmp_path, tree)
    new = _write(tmp_path / "new.cpio", cas, [_file(cas, "etc/motd", b"two\n")])
    planned = booted.update(new)
    assert not isinstance(planned, str)
    update, entries = planned
    assert update.written == ("etc/motd", "etc")
    booted.now(new, entries)
    assert not new.exists() and booted.entries == read_index(booted.initrd)
    assert stat.S_ISREG(booted.entries["etc/motd"].meta[0])


class _Guest:
    """The guest's end of the agent's serial port: QEMU's listening socket, played by the test."""

    def __init__(self, agent: Agent) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(agent.socket_path))
        self.server.listen(1)
        agent.listen()
        self.conn, _ = self.server.accept()
        self.lines = self.conn.makefile("rb")

    def say(self, *lines: str) -> None:
        self.conn.sendall("".join(f"{line}\r\n" for line in lines).encode())  # \r: the tty's

    def close(self) -> None:
        self.lines.close()
        self.conn.close()
        self.server.close()


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    scratch = tmp_path / "vm"
    scratch.mkdir(mode=0o700)
    return Agent(scratch)


def _answering(guest: _Guest, requests: list[str], *answers: str) -> threading.Thread:
    """The guest reading the host's next request into `requests`, then answering."""
    def answer() -> None:
        requests.append(guest.lines.readline().decode())
        guest.say(*answers)
    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def test_the_agent_writes_the_update_then_asks_and_waits_for_the_new_system(agent: Agent) -> None:
    guest = _Guest(agent)
    requests: list[str] = []
    try:
        guest.say("mk-agent ready")
        update = Update(("etc/gone",), ("etc/motd",), b"070701" + b"0" * 200)
        answered = _answering(guest, requests, "mk-agent took 1", "mk-agent done 1")
        assert agent.send(update) is None
        answered.join()
        payload, removed, archive = update.payload()
        assert requests == [f"mk-update 1 {removed} {archive}\n"]
        assert agent.drive.read_bytes()[:len(payload)] == payload
        guest.say("mk-agent ready")  # (a line the next update must not take for its answer)
        answered = _answering(guest, requests, "mk-agent took 2", "mk-agent failed 2")
        assert agent.send(update) == "the VM's soft-reboot agent could not apply the update"
        answered.join()
    finally:
        guest.close()


def test_an_agent_that_cannot_run_or_does_not_answer_means_a_full_reboot(agent: Agent, tmp_path: Path) -> None:
    update = Update((), (), b"")
    guest = _Guest(agent)
    try:
        guest.say("mk-agent unable")
        assert agent.send(update) == ("the image cannot soft-reboot (its kernel rule needs the overlay and "
                                      "virtio_blk modules)")
    finally:
        guest.close()
    scratch = tmp_path / "silent"
    scratch.mkdir(mode=0o700)
    silent = Agent(scratch)
    guest = _Guest(silent)
    try:
        assert silent.send(update) == f"the VM's soft-reboot agent did not answer within {READY_SECONDS:.0f} s " \
                                      "(still booting?)"
    finally:
        guest.close()


def test_an_update_larger_than_the_drive_means_a_full_reboot(agent: Agent) -> None:
    guest = _Guest(agent)
    try:
        guest.say("mk-agent ready")
        huge = Update((), (), b"\0" * (UPDATE_DRIVE_BYTES + 1))
        assert agent.send(huge) == "the update is 256 MB, more than the update drive's 256 MB"
    finally:
        guest.close()


def test_an_initrd_with_junk_between_its_archives_is_refused(cas: ContentStore, tmp_path: Path) -> None:
    archive = _write(tmp_path / "one.cpio", cas, [_file(cas, "etc/motd", b"one\n")])
    padded = _write_bytes(tmp_path / "padded.cpio", archive.read_bytes() + b"\0" * 512 + archive.read_bytes())
    assert list(read_index(padded)) == ["etc", "etc/motd"]
    junk = _write_bytes(tmp_path / "junk.cpio", archive.read_bytes() + b"\0\0\0\0junk")
    with pytest.raises(ArchiveError, match="neither padding nor an archive at byte"):
        read_index(junk)
