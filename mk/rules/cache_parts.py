"""The parts of the local cache the rule families write (see `mk.cache.parts` for what gc does
with each). Plain data, so that `mk cache stats` imports no rule."""

from mk.cache.parts import CachePart, Policy

DEBIAN_INDICES = CachePart("debian-indices", "Debian package indices read by `mk lock`, by sha256", Policy.EVICTABLE)
VM = CachePart("vm", "what `mk run` learnt of this machine (whether KVM works)", Policy.KEPT)
