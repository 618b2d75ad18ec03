"""The .deb reader in worker processes (mk.rules.deb.unpack): the same contents and errors as on the
calling thread, and a pool that recovers from a worker's death."""

from __future__ import annotations

import io
import multiprocessing
import os
import re
from pathlib import Path

import pytest
from debrepo import Deb, Member, build_deb

from mk.cache.cas import ContentStore
from mk.rules.deb import unpack
from mk.rules.deb.debfile import DebError, read_deb


def _package(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "app_1.0_amd64.deb"
    path.write_bytes(data)
    return path


def test_a_worker_reads_what_the_calling_thread_reads_and_stores_the_blobs(tmp_path: Path) -> None:
    deb = build_deb(Deb("app", members=[Member("./usr/bin/app", b"#!/bin/sh\n"), Member("./sbin", kind="dir"),
                                        Member("./sbin/app", kind="hardlink", target="./usr/bin/app"),
                                        Member("./usr/bin/ap", kind="symlink", target="app")]))
    here = read_deb(io.BytesIO(deb), ContentStore(tmp_path / "one"), "app_1.0_amd64.deb")
    store = ContentStore(tmp_path / "two")
    there = unpack.read_deb_in_worker(_package(tmp_path, deb), store, "app_1.0_amd64.deb")
    assert there == here
    assert all(store.has(e.digest) for e in there.tree.entries if e.digest)


def test_a_bad_package_fails_in_a_worker_as_on_the_calling_thread(tmp_path: Path) -> None:
    deb = build_deb(Deb("app", members=[Member("./../evil", b"x")]))
    with pytest.raises(DebError) as here:
        read_deb(io.BytesIO(deb), ContentStore(tmp_path / "one"), "app_1.0_amd64.deb")
    with pytest.raises(DebError) as there:
        unpack.read_deb_in_worker(_package(tmp_path, deb), ContentStore(tmp_path / "two"), "app_1.0_amd64.deb")
    assert str(there.value) == str(here.value)
    assert "climbs out of the tree" in str(there.value)


def test_a_dead_worker_fails_one_package_and_the_next_gets_new_workers(tmp_path: Path) -> None:
    path, store = _package(tmp_path, build_deb(Deb("app"))), ContentStore(tmp_path / "cas")
    unpack.read_deb_in_worker(path, store, "app_1.0_amd64.deb")  # the pool runs
    unpack._pool().submit(os._exit, 1)  # a worker killed (by the OOM killer, say) breaks the whole pool
    with pytest.raises(OSError, match=re.escape("app_1.0_amd64.deb: the process unpacking it died")):
        for _ in range(50):  # until the pool has noticed
            unpack.read_deb_in_worker(path, store, "app_1.0_amd64.deb")
    assert unpack.read_deb_in_worker(path, store, "app_1.0_amd64.deb").paths[-1] == "usr/share/doc/app/README"


def test_without_a_pool_the_package_is_read_on_the_calling_thread(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_semaphores(method: str) -> None:
        raise OSError(38, "Function not implemented")  # what multiprocessing meets without /dev/shm

    monkeypatch.setattr(unpack, "_pools", [])
    monkeypatch.setattr(multiprocessing, "get_context", no_semaphores)
    contents = unpack.read_deb_in_worker(_package(tmp_path, build_deb(Deb("app"))), ContentStore(tmp_path / "cas"),
                                         "app_1.0_amd64.deb")
    assert contents.paths[-1] == "usr/share/doc/app/README"
