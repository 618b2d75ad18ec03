"""Reading 64-bit little-endian ELF files (kernel modules, programs and their libraries) by their
section headers, which Debian's stripped files keep."""

from __future__ import annotations

import struct

_NOBITS = 8  # a section that takes no room in the file (.bss)
_DT_NULL, _DT_NEEDED = 0, 1


def sections(elf: bytes) -> dict[str, bytes]:
    """Each section's content, by name."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4] if headers else 0
    found = {}
    for name, kind, _flags, _addr, offset, size in headers:
        end = elf.index(b"\0", names_offset + name)
        found[elf[names_offset + name:end].decode()] = b"" if kind == _NOBITS else elf[offset:offset + size]
    return found


def needed(elf: bytes) -> list[str]:
    """The shared libraries a program or library asks the dynamic loader for (its DT_NEEDED entries)."""
    found = sections(elf)
    dynamic, names = found.get(".dynamic", b""), found.get(".dynstr", b"")
    libraries = []
    for offset in range(0, len(dynamic) - 15, 16):
        tag, value = struct.unpack_from("<qQ", dynamic, offset)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            libraries.append(names[value:names.index(b"\0", value)].decode())
    return libraries


def interpreter(elf: bytes) -> str | None:
    """The dynamic loader a program names (/lib64/ld-linux-x86-64.so.2), or None (a library, or static)."""
    interp = sections(elf).get(".interp")
    return interp.rstrip(b"\0").decode() if interp else None
