"""Debian packages: mirrors, signed indices, dependency resolution, lockfiles, fetch, unpack."""
