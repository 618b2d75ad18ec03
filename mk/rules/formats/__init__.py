"""Writers that turn trees into bytes: tar, cpio, compression, OCI. Deterministic by construction."""
