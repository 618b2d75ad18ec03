"""What an in-process action knows of its inputs: their blob digests always, their files unless it
says it reads its inputs through the store only (`staged_inputs=False`, as the image's manifest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mk.cache.local import LocalCache
from mk.cache.stat_cache import FileDigest
from mk.engine.actions import Action, ActionIO, Artifact
from mk.engine.execute import Executor
from mk.engine.labels import Label

DATA = b"an input's bytes\n" * 1000


def describes(io: ActionIO) -> None:
    (path,) = io.inputs
    sha256, size = io.cas.sha256(io.digests[path])
    io.output().write_text(json.dumps({"file": io.inputs[path].exists(), "sha256": sha256, "size": size}))


@pytest.mark.parametrize("staged", [True, False])
def test_a_function_gets_its_inputs_digests_and_files_only_when_staged(staged: bool, tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    digest = cache.cas.put_bytes(DATA)
    given = Artifact("p/input", False)
    action = Action(owner=Label.parse("//p:d"), mnemonic="Describe", inputs=(given,),
                    outputs=(Artifact("p/d.json", False),), function=describes, staged_inputs=staged)
    result = Executor(cache, cache.cas, tmp_path, lambda name: ()).run(action, "2" * 64,
                                                                       {given.path: FileDigest(digest, False)})
    described = json.loads(cache.cas.read_bytes(result.outputs[0].digest))
    assert described == {"file": staged, "sha256": hashlib.sha256(DATA).hexdigest(), "size": len(DATA)}
