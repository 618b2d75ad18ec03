"""Programs taken out of an image's tree with the shared libraries they load, for a small initrd
that has no package manager: each library is found as the dynamic loader would find it, by
name in Debian's library folders, and placed at that path as a plain file."""

from __future__ import annotations

from collections.abc import Mapping

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree
from mk.rules.elf import interpreter, needed

# Where Debian's dynamic loader looks when there is no /etc/ld.so.cache (an initrd has none): its
# machine's multiarch folders, then /lib. An image holds one machine's libraries, so the folders of
# both the machines mk builds for can be searched.
LIBRARY_FOLDERS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
                   "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")


def with_libraries(tree: Tree, cas: ContentStore, programs: Mapping[str, str], wanted_by: str) -> list[Entry]:
    """`programs` (tree path: the Debian package that has it) and everything they load, as entries
    to add to another tree. `wanted_by` says what needs them, for the error naming a missing one."""
    for path, package in programs.items():
        if tree.lookup(path) is None:
            raise ValueError(f"{wanted_by} needs /{path}, which is not in the image: add {package} to 'base'")
    placed: dict[str, Entry] = {}
    pending = [(path, f"{wanted_by} needs") for path in programs]
    while pending:
        path, why = pending.pop(0)
        if path in placed:
            continue
        entry = tree.lookup(path)
        if entry is None or entry.kind is not Kind.FILE:
            raise ValueError(f"{why} /{path}, which is not a file in the image")
        placed[path] = Entry(path, Kind.FILE, entry.mode, digest=entry.digest, size=entry.size)
        elf = cas.read_bytes(entry.digest, entry.size)
        loader = interpreter(elf)
        if loader is not None:
            pending.append((loader.lstrip("/"), f"/{path} is loaded by"))
        for library in needed(elf):
            folder = next((f for f in LIBRARY_FOLDERS if tree.lookup(f"{f}/{library}") is not None), None)
            if folder is None:
                raise ValueError(f"/{path} needs the library {library}, which is in none of "
                                 f"{', '.join('/' + f for f in LIBRARY_FOLDERS)} in the image")
            pending.append((f"{folder}/{library}", f"/{path} needs"))
    return list(placed.values())
