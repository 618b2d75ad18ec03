"""The records only later commands read (explain's, the build logs, the recent results): the
build server keeps what it parsed of them while their files stay the same, and never serves what
another process has since written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mk.cache.action_cache import ActionResult, OutputFile, RecentResults
from mk.cache.fsutil import read_parsed, write_parsed


def counting_parse(calls: list[bytes]) -> Callable[[bytes], bytes]:
    def parse(data: bytes) -> bytes:
        calls.append(data)
        return data.upper()
    return parse


def test_a_file_is_parsed_again_only_once_it_is_replaced(tmp_path: Path) -> None:
    record, calls = tmp_path / "record", list[bytes]()
    parse = counting_parse(calls)
    record.write_bytes(b"one")
    assert read_parsed(record, parse) == b"ONE"
    assert read_parsed(record, parse) == b"ONE"
    assert calls == [b"one"], "the same file is parsed once"
    # Another process replaces it, with bytes of the same size, as atomic writes do.
    other = tmp_path / "other"
    other.write_bytes(b"two")
    os.replace(other, record)
    assert read_parsed(record, parse) == b"TWO"
    assert calls == [b"one", b"two"]


def test_what_was_written_is_not_parsed_back(tmp_path: Path) -> None:
    record, calls = tmp_path / "record", list[bytes]()
    parse = counting_parse(calls)
    write_parsed(record, b"three", b"THREE")
    assert record.read_bytes() == b"three"
    assert read_parsed(record, parse) == b"THREE"
    assert calls == []


def result(digest: str) -> ActionResult:
    return ActionResult((OutputFile("pkg/out.txt", digest, False),), 0, "d" * 64)


def test_recent_results_encode_again_a_result_that_changed_for_the_same_key(tmp_path: Path) -> None:
    file = tmp_path / "recent.msgpack"
    recent = RecentResults(file)
    first = result("a" * 64)
    recent.save({"k1": first})
    # The same key with another result (made again after its blobs were lost, say), and a new key.
    recent.save({"k1": result("b" * 64), "k2": first})
    reread = RecentResults(file)
    got1, got2 = reread.get("k1"), reread.get("k2")
    assert got1 is not None and got1[0] == result("b" * 64)
    assert got2 is not None and got2[0] == first
