"""Facts remembered by a blob's digest (its SHA-256, busybox's applets): learnt once from the
verified bytes, and a record that is damaged, or belongs to another blob, is never believed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mk.cache.cas import RAW_FROM, ContentStore
from mk.cache.facts import BlobFacts
from mk.cache.tree import Entry, Kind, Tree
from mk.rules import image_check
from mk.rules.image_check import busybox_applets, check_commands

DATA = os.urandom(3 << 20)  # large enough to be stored as it is
APPLET_NAMES = [f"applet{i:02d}" for i in range(30)]
APPLETS = b"\0".join(name.encode() for name in APPLET_NAMES) + b"\0"
BUSYBOX = b"\x7fELF" + b"\xff" * 1000 + b"\0" + APPLETS + b"\xff" * 1000  # (random bytes could extend the table)


def test_the_sha256_of_a_blob_is_learnt_from_its_bytes_and_remembered(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(DATA)
    assert cas.sha256(digest) == (hashlib.sha256(DATA).hexdigest(), len(DATA))
    record = cas.facts.path("sha256", digest)
    assert record.is_file()
    cas.path(digest).unlink()  # remembered: the bytes are not read again
    assert cas.sha256(digest) == (hashlib.sha256(DATA).hexdigest(), len(DATA))


@pytest.mark.parametrize("damage", ["flipped", "cut", "empty"])
def test_a_damaged_sha256_record_is_dropped_and_learnt_again(damage: str, tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(DATA)
    cas.sha256(digest)
    record = cas.facts.path("sha256", digest)
    data = bytearray(record.read_bytes())
    if damage == "flipped":
        data[-5] ^= 0x01  # a digit of the SHA-256 becomes another: the seal no longer matches
    record.write_bytes(bytes(data[:-3]) if damage == "cut" else b"" if damage == "empty" else bytes(data))
    assert cas.facts.known("sha256", digest) is None
    assert not record.exists()
    assert cas.sha256(digest) == (hashlib.sha256(DATA).hexdigest(), len(DATA))


def test_a_wrong_sha256_record_under_another_blobs_name_is_not_believed(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    first, second = cas.put_bytes(DATA), cas.put_bytes(DATA[::-1])
    cas.sha256(first)
    wrong = cas.facts.path("sha256", second)
    wrong.parent.mkdir(parents=True, exist_ok=True)
    wrong.write_bytes(cas.facts.path("sha256", first).read_bytes())  # sealed, but for another blob
    assert cas.sha256(second) == (hashlib.sha256(DATA[::-1]).hexdigest(), len(DATA))


def test_a_record_of_another_kind_of_fact_is_not_believed(tmp_path: Path) -> None:
    facts = BlobFacts(tmp_path)
    digest = "ab" * 32
    facts.learn("sha256", digest, lambda: b"x")
    other = facts.path("busybox-applets", digest)
    other.parent.mkdir(parents=True)
    other.write_bytes(facts.path("sha256", digest).read_bytes())
    assert facts.known("busybox-applets", digest) is None
    assert facts.learn("busybox-applets", digest, lambda: b"[]") == b"[]"


def test_a_fact_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    facts = BlobFacts(tmp_path)

    def fails() -> bytes:
        raise OSError("the read failed")

    with pytest.raises(OSError):
        facts.learn("sha256", "cd" * 32, fails)
    assert not facts.root.exists() or not any(p.is_file() for p in facts.root.rglob("*"))


def test_busybox_applets_are_scanned_once_and_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(BUSYBOX)
    expected = busybox_applets(BUSYBOX)
    assert expected is not None and len(expected) == 30
    assert image_check._stored_applets(cas, digest, len(BUSYBOX)) == expected

    def not_again(binary: bytes) -> frozenset[str] | None:
        raise AssertionError("busybox was scanned again")

    monkeypatch.setattr(image_check, "busybox_applets", not_again)
    assert image_check._stored_applets(cas, digest, len(BUSYBOX)) == expected


def test_damaged_applets_are_scanned_again(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    digest = cas.put_bytes(BUSYBOX)
    image_check._stored_applets(cas, digest, len(BUSYBOX))
    (record,) = [p for p in cas.facts.root.rglob(digest)]
    data = bytearray(record.read_bytes())
    data[-4] ^= 0x20  # one applet's name changes case: the seal no longer matches
    record.write_bytes(bytes(data))
    assert image_check._stored_applets(cas, digest, len(BUSYBOX)) == busybox_applets(BUSYBOX)
    assert cas.facts.known(record.parent.parent.name, digest) == json.dumps(sorted(APPLET_NAMES)).encode()


def test_a_scripts_interpreter_is_read_once_from_its_verified_bytes(tmp_path: Path) -> None:
    cas = ContentStore(tmp_path)
    script = b"#!/opt/python3 -u\n" + os.urandom(RAW_FROM)
    digest = cas.put_bytes(script)
    tree = Tree.build([Entry("usr", Kind.DIR, 0o755), Entry("usr/bin", Kind.DIR, 0o755),
                       Entry("usr/bin/tool", Kind.FILE, 0o755, digest=digest, size=len(script))])
    (problem,) = check_commands(tree, cas, ["/usr/bin/tool"], [])
    assert problem.startswith("service '/usr/bin/tool': /usr/bin/tool starts with #!/opt/python3; /opt/python3 is not")
    cas.path(digest).unlink()  # its head is remembered: the check does not read it again
    assert check_commands(tree, cas, ["/usr/bin/tool"], []) == [problem]


def test_the_kind_busybox_applets_are_remembered_as_is_the_same_in_every_process() -> None:
    program = "from mk.rules.image_check import _applets_kind; print(_applets_kind())"
    kinds = {subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert kinds == {image_check._applets_kind()}
