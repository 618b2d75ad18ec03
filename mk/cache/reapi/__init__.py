"""Speaking the Remote Execution API (REAPI v2) and BuildGrid's Bots API over gRPC.

`protos` holds the generated modules (scripts/gen_protos.py); `endpoint` opens channels;
`capabilities` chooses the digest function from what the server offers; `digests` maps mk's
blake3 digests to REAPI's SHA-256 ones; `cas_client` moves blobs; `merkle` builds input roots.
What an mk action becomes on the wire, and the worker that runs it, are the engine's
(mk/engine/remote_exec.py, mk/engine/worker.py).
"""
