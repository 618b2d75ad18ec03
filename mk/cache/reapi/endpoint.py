"""Where a REAPI server is and how to reach it: `grpc://host:port` (plain) or `grpcs://host:port`
(TLS), an instance name, and a bearer token sent with every call. The token is never part of
anything shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import grpc

# Far more than any blob mk sends in one message: batches are kept below the server's own limit.
_MAX_MESSAGE = 64 << 20


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    url: str  # as shown: grpc://host:port or grpcs://host:port
    target: str  # host:port, for gRPC
    tls: bool
    instance: str = ""
    token: str | None = None
    ca_file: str | None = None  # PEM roots for TLS; None: the system's
    role: str = "remote executor"  # what messages call the server: mk also uses one as its cache

    @staticmethod
    def parse(url: str, instance: str = "", token: str | None = None, ca_file: str | None = None,
              role: str = "remote executor") -> Endpoint:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or "@" in parts.netloc:
            raise EndpointError(f"a {role} over gRPC is grpc://host:port or grpcs://host:port, got '{url}'")
        try:
            port = parts.port or (443 if parts.scheme == "grpcs" else None)
        except ValueError:
            port = None
        if port is None:
            raise EndpointError(f"the {role} '{url}' names no port (grpc://host:port)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        target = f"{host}:{port}"
        return Endpoint(f"{parts.scheme}://{target}", target, parts.scheme == "grpcs", instance, token, ca_file,
                        role)

    def shown(self) -> str:
        return f"{self.url} (instance '{self.instance}')" if self.instance else self.url

    def channel(self) -> grpc.Channel:
        import grpc

        options = [("grpc.max_receive_message_length", _MAX_MESSAGE),
                   ("grpc.max_send_message_length", _MAX_MESSAGE),
                   ("grpc.enable_retries", 0)]  # mk says what failed, and decides what to retry
        if not self.tls:  # gRPC sends call credentials only over TLS: a token goes in `metadata`
            return grpc.insecure_channel(self.target, options)
        roots = open(self.ca_file, "rb").read() if self.ca_file else None  # noqa: SIM115 (small, read once)
        credentials = grpc.ssl_channel_credentials(roots)
        if self.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token))
        return grpc.secure_channel(self.target, credentials, options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the bearer token on a plain-text channel (TLS channels carry it)."""
        if self.token and not self.tls:
            return (("authorization", f"Bearer {self.token}"),)
        return ()
