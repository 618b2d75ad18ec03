"""The shared remote cache: signed action results and blobs over HTTP or REAPI (gRPC; see
cache_transport), never trusted blindly.

What the build sees:

- `lookup(key)`: the action result stored remotely for `key`, if a trusted key signed it for
  that very key (see `signing`). Its output blobs are *not* downloaded: a hit costs one small
  GET ("build without the bytes"). Accepted results are remembered under the local cache's
  `remote-ac/` folder (namespaced by the remote and the trusted keys), so the next build finds
  them with no network at all: `remembered(key)`.
- `fetch(digest)`: called by the content store when a blob it is asked for is missing, so only
  the blobs something reads (an action's inputs, a requested output) are downloaded. Each is
  verified against its digest as it streams in.
- `upload(key, result, blobs)`: after an action ran, its output blobs, its log and every other
  blob it stored (tree contents) are uploaded in the background, then its signed result, never
  before its blobs are all there. Each blob is verified first: a corrupt local blob is removed
  (the next build makes it again) and neither it nor any result that needs it is uploaded.
- `find_fixed(sha256)`, `publish_fixed(sha256, digest)`: the blob of a download pinned by sha256
  (a Debian package), under a key made from the sha256 alone and signed like a result, so that
  it is found whatever mk's code (and so the action keys) has become (see `fixed_outputs`).

Failure policy: the remote can make a build slower but never wrong or failed. A result that is
unsigned, wrongly signed, signed by an untrusted key or malformed is ignored (one warning per
build) and the action runs locally. A server that is unreachable, hangs past the timeout, is
too slow (each request has a total deadline, see `http`), answers 5xx or truncates a body is
given up on for the rest of the build after one warning (a circuit breaker), and whatever was
under way with it is cut at once. So is everything on Ctrl-C (see `stop_with`): no transfer
thread holds the process up. A blob that the remote lacks or serves with wrong bytes also stops all remote
*reads* for the rest of the process: the build's retry (see engine.build) then rebuilds locally
whatever needed it, without any remote result. Blobs and results that were not uploaded are
counted: the summary line says how many and the first error, and so does a `remote_upload_failed`
event in --json-events.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TextIO

import blake3

from mk.cache.action_cache import MAX_RESULT_BYTES, ActionCache, ActionResult, OutputFile
from mk.cache.cas import ContentStore, CorruptBlobError, MissingBlobError
from mk.cache.local import LocalCache
from mk.cache.parts import REMOTE_RESULTS
from mk.cache.signing import PublicKey, SecretKey, UntrustedResultError, sign, verify
from mk.cache.units import human_size

if TYPE_CHECKING:
    import concurrent.futures as cf

    from mk.cache.cache_transport import CacheTransport
    from mk.cache.reapi.endpoint import Endpoint

# Blobs smaller than this are PUT without asking first (a HEAD costs as much as the upload).
_HEAD_FIRST_BYTES = 256 << 10


_FIXED_OUTPUT_CONTEXT = b"mk-fixed-output-sha256\0"


def fixed_output_key(sha256: str) -> str:
    """Where the remote cache keeps the blob of a download pinned by `sha256`: a key made from the
    sha256 alone, so no change to mk (which changes action keys) loses it."""
    return blake3.blake3(_FIXED_OUTPUT_CONTEXT + sha256.encode()).hexdigest()


def _fixed_output_name(sha256: str) -> str:
    """The one output its index entry names; an entry naming anything else is not one."""
    return f"sha256/{sha256}"


@dataclass(frozen=True)
class RemoteConfig:
    """Where the remote cache is and how to talk to it; credentials are kept out of `url`."""

    url: str  # base URL without credentials, no trailing slash
    endpoint: Endpoint | None = None  # a REAPI server's ActionCache and CAS instead of HTTP (grpc:// URLs)
    upload: bool = True  # read-write (with a signing key) or read-only
    token: str | None = None  # bearer token
    basic_auth: tuple[str, str] | None = None  # user, password
    signing_key: SecretKey | None = None
    trusted_keys: tuple[PublicKey, ...] = ()
    timeout: float = 10.0  # seconds, for connecting and for each read
    connections: int = 8  # parallel transfers (and pooled connections)

    def headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.basic_auth:
            import urllib3

            return urllib3.make_headers(basic_auth=f"{self.basic_auth[0]}:{self.basic_auth[1]}")
        return {}

    def redact(self, text: str) -> str:
        """`text` with every credential replaced by '***' (for every message that may be shown)."""
        secrets = [self.token] if self.token else []
        if self.basic_auth:
            import base64

            user, password = self.basic_auth
            secrets += [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
        for secret in sorted((s for s in secrets if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def namespace(self) -> str:
        """Names the folder of remembered results: changing the remote or the keys starts afresh."""
        instance = [f"instance {self.endpoint.instance}"] if self.endpoint is not None else []
        material = [self.url, *instance, *sorted(k.line() for k in self.trusted_keys)]
        if self.signing_key is not None:
            material.append(blake3.blake3(self.signing_key.line().encode()).hexdigest())
        return blake3.blake3("\n".join(material).encode()).hexdigest()[:16]


@dataclass
class TransferStats:
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    blobs_down: int = 0
    bytes_down: int = 0
    blobs_up: int = 0
    bytes_up: int = 0
    results_up: int = 0
    errors: list[str] = field(default_factory=list)
    # What was to be uploaded and was not, and why the first of it was not (for the CI's log).
    blobs_failed: int = 0
    results_failed: int = 0
    upload_error: str | None = None

    def brief(self) -> str:
        """For the live progress view: the bytes moved so far."""
        return (f"remote cache: {self.hits} hits, down {human_size(self.bytes_down)} ({self.blobs_down} blobs), "
                f"up {human_size(self.bytes_up)} ({self.blobs_up} blobs)")

    def line(self, url: str) -> str:
        failed = (f"; failed to upload {self.blobs_failed} blobs and {self.results_failed} results "
                  f"(first error: {self.upload_error})" if self.blobs_failed or self.results_failed else "")
        return (
            f"mk: remote cache {url}: {self.hits} hits, {self.misses} misses, {self.rejected} rejected; "
            f"downloaded {self.blobs_down} blobs ({human_size(self.bytes_down)}); "
            f"uploaded {self.blobs_up} blobs ({human_size(self.bytes_up)}) and {self.results_up} results{failed}"
        )

    def event(self, url: str) -> dict[str, object] | None:
        """The --json-events record of what failed to upload, or None when nothing did."""
        if not (self.blobs_failed or self.results_failed):
            return None
        return {"event": "remote_upload_failed", "url": url, "blobs": self.blobs_failed,
                "results": self.results_failed, "first_error": self.upload_error}


class RemoteCache:
    def __init__(
        self, config: RemoteConfig, local: LocalCache, stream: TextIO | None = None, events: TextIO | None = None,
    ) -> None:
        self.config = config
        self.local = local
        self.stream = stream
        self.events = events  # --json-events: told of failed uploads when the remote is closed
        self.mirror = ActionCache(local.root / REMOTE_RESULTS.name, config.namespace())
        # Uploads read the local store without a fetcher: a blob that is not here is not uploaded,
        # rather than fetched from the very remote it was to be uploaded to.
        self._store = ContentStore(local.root)
        self.stats = TransferStats()
        self._trusted: tuple[PublicKey, ...] | None = None
        self._lock = threading.Lock()
        self._transport: CacheTransport | None = None
        self._warned: set[str] = set()
        self._dead = False  # the circuit breaker: no more requests of any kind
        self._halted = False  # Ctrl-C: everything stops, quietly
        self._cancelled: threading.Event | None = None  # see stop_with
        self._gave_up: str | None = None  # why uploads stopped (the breaker, or a server that refuses them)
        self._reads_off = False  # a blob went missing or bad: no more remote results or blobs
        self._uploads_off = not config.upload or config.signing_key is None
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._bad_remote_blobs: set[str] = set()
        self._blob_uploads: dict[str, cf.Future[bool]] = {}
        self._result_uploads: list[cf.Future[None]] = []
        self._pools: dict[str, cf.ThreadPoolExecutor] = {}
        self._can_read = bool(config.trusted_keys or config.signing_key)
        if not self._can_read:
            self._warn("keys", "no trusted keys (trusted_keys in mk.toml or MK_TRUSTED_KEYS), so no result "
                               "from it can be used")

    # ---- state ------------------------------------------------------------------------------

    @property
    def reading(self) -> bool:
        return self._can_read and not self._dead and not self._reads_off

    @property
    def uploading(self) -> bool:
        return not self._uploads_off and not self._dead

    def _warn(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        text = self.config.redact(f"mk: warning: remote cache {self.config.url}: {message}")
        stream = self.stream or sys.stderr
        stream.write(text + "\n")  # one write: progress lines come from other threads
        stream.flush()

    def _trip(self, reason: str) -> None:
        """The server does not answer properly: stop asking it anything for the rest of the build,
        and cut what is under way with it (no thread waits out its own deadline)."""
        with self._lock:
            first, self._dead = not self._dead, True
        if self._transport is not None:
            self._transport.abort(reason)
        if not first or self._interrupted():
            return  # (the transfers cut here, or by Ctrl-C, fail too: that says nothing new)
        self._gave_up = self._gave_up or reason
        self.stats.errors.append(reason)
        self._warn("dead", f"{reason}; carrying on without it for the rest of this build")

    def stop_with(self, cancelled: threading.Event) -> None:
        """Cut every transfer, quietly, as soon as `cancelled` is set: the executor's flag, set on
        Ctrl-C before the build waits for its worker threads, which may be waiting on the remote."""
        self._cancelled = cancelled

    def _interrupted(self) -> bool:
        return self._halted or (self._cancelled is not None and self._cancelled.is_set())

    def _lose_reads(self, reason: str) -> None:
        self._reads_off = True
        self.stats.errors.append(reason)
        self._warn("blob", f"{reason}; not using its results for the rest of this build "
                           "(what needed them is rebuilt locally)")

    def _client(self) -> CacheTransport:
        with self._lock:
            if self._transport is None:
                self._transport = self._connect()
            return self._transport

    def _connect(self) -> CacheTransport:
        if self.config.endpoint is not None:
            from mk.cache.reapi.cache import ReapiCache

            return ReapiCache(self.config.endpoint, self.local.root, self.config.timeout, stop=self._interrupted)
        from mk.cache.cache_transport import HttpCache
        from mk.cache.http import HttpStore

        return HttpCache(HttpStore(self.config.url, self.config.headers(), self.config.timeout,
                                   self.config.connections, self.config.redact, stop=self._interrupted))

    def _pool(self, name: str) -> cf.ThreadPoolExecutor:
        import concurrent.futures as cf  # (a build that needs no transfer never loads it)

        with self._lock:
            pool = self._pools.get(name)
            if pool is None:
                pool = cf.ThreadPoolExecutor(self.config.connections, thread_name_prefix=f"mk-remote-{name}")
                self._pools[name] = pool
            return pool

    def _trust(self) -> tuple[PublicKey, ...]:
        if self._trusted is None:
            own = (self.config.signing_key.public(),) if self.config.signing_key else ()
            self._trusted = tuple(self.config.trusted_keys) + own
        return self._trusted

    # ---- action results ---------------------------------------------------------------------

    def remembered(self, key: str) -> ActionResult | None:
        """A result this machine got from the remote and verified before; no network."""
        if not self.reading:
            return None
        result = self.mirror.get(key)
        if result is not None:
            self.mirror.touch(key)  # for least-recently-used garbage collection
        return result

    def lookup(self, key: str) -> ActionResult | None:
        """The remote's result for `key` if a trusted key signed it for this key; else None."""
        result = self._signed(key, counted=True)
        if result is not None:
            self.mirror.put(key, result)
        return result

    def _signed(self, key: str, counted: bool) -> ActionResult | None:
        """The entry under `key` if a trusted key signed it for this key; `counted` in the hits
        and misses of action results (an index entry of a pinned download is not one)."""
        if not self.reading:
            return None
        from mk.cache.cache_transport import TransportError

        try:
            envelope = self._client().get_result(key, MAX_RESULT_BYTES)
        except TransportError as e:
            self._trip(str(e))
            return None
        if envelope is None:
            with self._lock:
                self.stats.misses += counted
            return None
        try:
            result = verify(envelope, key, self._trust())
        except UntrustedResultError as e:
            with self._lock:
                self.stats.rejected += 1
            self._warn("untrusted", f"ignoring action results not signed by a trusted key "
                                    f"(first: {key[:16]}…: {e}); those actions run locally")
            return None
        with self._lock:
            self.stats.hits += counted
        return result

    # ---- downloads pinned by sha256 (see fixed_outputs) --------------------------------------

    def find_fixed(self, sha256: str) -> str | None:
        """The digest of the blob a trusted key published for this sha256, once that blob is in
        the local store; None when the remote has none (or cannot be read)."""
        result = self._signed(fixed_output_key(sha256), counted=False)
        if result is None or [o.path for o in result.outputs] != [_fixed_output_name(sha256)]:
            return None
        digest = result.outputs[0].digest
        return digest if self.fetch(digest) else None

    def publish_fixed(self, sha256: str, digest: str) -> None:
        """Upload a pinned download's blob (in the local store) and its signed index entry, in the
        background, as `upload` does an action's."""
        if not self.uploading:
            return
        empty_log = self._store.put_bytes(b"")
        self.upload(fixed_output_key(sha256),
                    ActionResult((OutputFile(_fixed_output_name(sha256), digest, False),), 0, empty_log))

    # ---- blobs ------------------------------------------------------------------------------

    def fetch(self, digest: str) -> bool:
        """Download a blob into the local content store, verified; False if it cannot be had."""
        if not self.reading:
            return False
        with self._lock:
            lock = self._fetch_locks.setdefault(digest, threading.Lock())
        with lock:  # two threads asking for one blob download it once
            if self.local.cas.has(digest):
                return True
            if not self.reading:
                return False
            return self._download(digest)

    def _download(self, digest: str) -> bool:
        from mk.cache.cache_transport import TransportError

        try:
            size = self._client().get_blob(digest, self.local.cas)
            if size is None:
                self._lose_reads(f"blob {digest[:16]}… is missing")
                return False
        except TransportError as e:
            self._trip(str(e))
            return False
        except CorruptBlobError:
            with self._lock:
                self._bad_remote_blobs.add(digest)
            self._lose_reads(f"blob {digest[:16]}… has the wrong bytes")
            return False
        except OSError as e:  # the local disk, not the remote
            self._warn("local", f"cannot store a downloaded blob: {e}")
            return False
        with self._lock:
            self.stats.blobs_down += 1
            self.stats.bytes_down += size
        return True

    def fetch_many(self, digests: Iterable[str]) -> None:
        wanted = [d for d in digests if not self.local.cas.has(d)]
        if not self.reading or not wanted:
            return
        if len(wanted) == 1:
            self.fetch(wanted[0])
            return
        for future in [self._pool("down").submit(self.fetch, d) for d in wanted]:
            future.result()

    # ---- uploads ----------------------------------------------------------------------------

    def upload(self, key: str, result: ActionResult, blobs: Sequence[str] = ()) -> None:
        """Upload an executed action's blobs, then its signed result, in the background."""
        if not self.uploading:
            return
        digests = dict.fromkeys([*(o.digest for o in result.outputs), result.log_digest, *blobs])
        futures = [self._upload_blob(d) for d in digests]
        future = self._pool("results").submit(self._put_result, key, result, futures)
        with self._lock:
            self._result_uploads.append(future)

    def _upload_blob(self, digest: str) -> cf.Future[bool]:
        """Each blob is uploaded once per build, however many actions stored it."""
        pool = self._pool("up")
        with self._lock:
            future = self._blob_uploads.get(digest)
            if future is None:
                future = self._blob_uploads[digest] = pool.submit(self._put_blob, digest)
        return future

    def _put_blob(self, digest: str) -> bool:
        from mk.cache.cache_transport import TransportError

        if not self.uploading:
            return self._not_uploaded("blob")
        path = self._store.path(digest)
        try:
            ask_first = os.stat(path).st_size >= _HEAD_FIRST_BYTES and digest not in self._bad_remote_blobs
            size = self._client().put_blob(digest, self._store, ask_first)
            if size is None:
                return True
        except TransportError as e:
            self._upload_failed(e)
            return self._not_uploaded("blob", str(e))
        except CorruptBlobError:  # the store removed it
            with self._lock:
                self._blob_uploads.pop(digest, None)  # so that a rebuilt blob of this name goes up
            self._warn("corrupt", f"local blob {digest} is corrupt: removed it, and uploaded neither it nor "
                                  "the results that need it")
            return self._not_uploaded("blob", f"local blob {digest[:16]}… is corrupt")
        except (OSError, MissingBlobError):  # gone from the local store; its result is not uploaded
            return self._not_uploaded("blob", f"local blob {digest[:16]}… is gone")
        with self._lock:
            self.stats.blobs_up += 1
            self.stats.bytes_up += size
        return True

    def _put_result(self, key: str, result: ActionResult, blobs: list[cf.Future[bool]]) -> None:
        from mk.cache.cache_transport import TransportError

        if not all([f.result() for f in blobs]) or not self.uploading:  # (a list: every blob is done)
            self._not_uploaded("result")  # never a result whose blobs the remote may lack
            return
        assert self.config.signing_key is not None
        envelope = sign(self.config.signing_key, key, result)
        try:
            self._client().put_result(key, envelope)
        except TransportError as e:
            self._upload_failed(e)
            self._not_uploaded("result", str(e))
            return
        with self._lock:
            self.stats.results_up += 1

    def _upload_failed(self, error: Exception) -> None:
        with self._lock:  # first, before the transfers this failure cuts report theirs
            self.stats.upload_error = self.stats.upload_error or str(error)
        if getattr(error, "refuses_uploads", False):
            self._uploads_off = True
            self._gave_up = self._gave_up or str(error)
            self._warn("refused", f"refuses uploads ({error}); not uploading for the rest of this build")
        else:
            self._trip(str(error))

    def _not_uploaded(self, what: Literal["blob", "result"], reason: str | None = None) -> Literal[False]:
        """Count a blob or a result that was to be uploaded and is not; `reason` defaults to why
        uploads stopped."""
        with self._lock:
            if what == "blob":
                self.stats.blobs_failed += 1
            else:
                self.stats.results_failed += 1
            self.stats.upload_error = self.stats.upload_error or reason or self._gave_up
        return False

    # ---- end of build -----------------------------------------------------------------------

    def close(self, wait: bool = True) -> None:
        """Finish the uploads (each within its deadline), tell --json-events of any that failed,
        then release connections. Without `wait` (Ctrl-C), or if interrupted while waiting, the
        transfers under way are cut, so that no thread is left to hold the process up."""
        try:
            if wait:
                with self._lock:
                    pending = list(self._result_uploads)
                for future in pending:
                    future.exception()
        except BaseException:
            wait = False
            raise
        finally:
            if not wait:
                self._halted = self._dead = True
                if self._transport is not None:
                    self._transport.abort("interrupted")
            with self._lock:
                pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                pool.shutdown(wait=wait, cancel_futures=not wait)
            if self._transport is not None:
                self._transport.close()
            if self.events is not None and (event := self.stats.event(self.config.url)) is not None:
                self.events.write(self.config.redact(json.dumps(event, sort_keys=True)) + "\n")

    def report(self) -> str | None:
        """One line on what was transferred, or None when the remote was not asked anything."""
        s = self.stats
        if not (s.hits or s.misses or s.rejected or s.blobs_down or s.blobs_up or s.results_up or s.errors
                or s.blobs_failed or s.results_failed):
            return None
        return self.config.redact(s.line(self.config.url))

