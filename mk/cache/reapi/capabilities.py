"""Which digest function blobs travel under, chosen from a REAPI server's `GetCapabilities`.

A server lists the functions its CAS takes (`cache_capabilities.digest_functions`) and those its
executor takes (`execution_capabilities.digest_functions`, or the older single `digest_function`
when the list is unset). mk takes the first function of `SPOKEN` that both offer. BLAKE3, mk's
own naming, would need no mapping to SHA-256 at all; it is not in `SPOKEN` yet because mk's
client and worker send and check every REAPI digest as SHA-256 (`digests.Sha256`), so a server
offering BLAKE3 beside SHA-256 gets SHA-256, and says so. BuildGrid 0.4.4 offers SHA-256 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

if TYPE_CHECKING:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

Function: TypeAlias = "re_pb2.DigestFunction.Value.ValueType"
# build.bazel.remote.execution.v2.DigestFunction's values (the protos are imported only when used)
SHA256, BLAKE3 = cast(Function, 1), cast(Function, 9)
NAMES = {SHA256: "SHA-256", BLAKE3: "BLAKE3"}
SPOKEN = (SHA256,)  # what mk sends, best first


@dataclass(frozen=True)
class DigestChoice:
    function: Function  # a DigestFunction value: what requests carry as `digest_function`
    offered: tuple[Function, ...]  # every function the server executes and stores with, in its order

    @property
    def name(self) -> str:
        return NAMES[self.function]

    def said(self) -> str:
        """For mk's report: the function, and what else the server offered."""
        others = [_name(f) for f in self.offered if f != self.function]
        return f"digests {self.name}" + (f" (also offered: {', '.join(others)})" if others else "")


class NoCommonDigest(ValueError):
    pass


def choose(capabilities: re_pb2.ServerCapabilities, spoken: tuple[Function, ...] = SPOKEN) -> DigestChoice:
    """The first of `spoken` the server both stores and executes with; NoCommonDigest otherwise."""
    execution = capabilities.execution_capabilities
    executes = list(execution.digest_functions) or [execution.digest_function]
    stores = set(capabilities.cache_capabilities.digest_functions) or set(executes)
    offered = tuple(f for f in dict.fromkeys(executes) if f in stores)
    for function in spoken:
        if function in offered:
            return DigestChoice(function, offered)
    raise NoCommonDigest(f"it names blobs by {', '.join(_name(f) for f in offered) or 'no digest function'}, "
                         f"and mk sends {' or '.join(NAMES[f] for f in spoken)}")


def _name(function: Function) -> str:
    from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

    return NAMES.get(function) or re_pb2.DigestFunction.Value.Name(function)
