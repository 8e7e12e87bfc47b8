"""Authenticated gRPC hops: TLS / mutual-TLS credentials and a service-token check, built
from typed config once at start.

Server side, `ServerSecurity` holds a port's credentials and the interceptors that check
each call; client side, `ClientSecurity` opens channels with the matching credentials and
names the metadata every call carries. Nothing here reads a file or a secret per call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc

from adapters.config import AdapterServiceSettings, ClientTLS, SecretRef, ServerTLS
from imesh.errors import MeshError, Reason

log = logging.getLogger(__name__)

# The metadata key carrying a service token (a router's, on its calls to an adapter).
SERVICE_TOKEN_KEY: Final = "x-imesh-service-token"
HEALTH_SERVICE: Final = "grpc.health.v1.Health"
# A token shorter than this is a typo or a placeholder, not a secret.
MIN_TOKEN_CHARS: Final = 16

_ChannelOptions = Sequence[tuple[str, Any]]


class CredentialError(KeyError):
    """A token, key or certificate the config names cannot be used. A KeyError, so start-up
    reports it as it reports an unset secret: one line naming the file or variable, never
    a value."""

    def __str__(self) -> str:
        return str(self.args[0])


def read_pem(path: Path, what: str) -> bytes:
    """A PEM file's bytes, read once at start."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise CredentialError(f"{what} {path} is not a PEM file")
    return data


def resolve_token(ref: SecretRef) -> str:
    """The token a reference names, checked fit for gRPC metadata and long enough."""
    try:
        token = ref.resolve()
    except KeyError as exc:
        raise CredentialError(f"service token: {exc.args[0]}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise CredentialError(
            f"service token {ref.ref} is shorter than {MIN_TOKEN_CHARS} characters"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CredentialError(f"service token {ref.ref} must be printable ASCII without spaces")
    return token


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """TLS for a server port; with `client_ca`, clients without a certificate that CA
    signed are refused during the handshake."""
    pair = (read_pem(tls.key, "TLS key"), read_pem(tls.cert, "TLS certificate"))
    if tls.client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=read_pem(tls.client_ca, "client CA"), require_client_auth=True
    )


def channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    """TLS for a channel: the CA that verifies the server and, for mutual TLS, the
    client's own certificate and key."""
    key = read_pem(tls.key, "TLS key") if tls.key is not None else None
    cert = read_pem(tls.cert, "TLS certificate") if tls.cert is not None else None
    return grpc.ssl_channel_credentials(read_pem(tls.ca, "CA"), key, cert)


class TokenChecker:
    """Accepts any of a fixed set of tokens (several while one is rotated).

    Compares SHA-256 digests with `hmac.compare_digest`, against every accepted token each
    time, so the time taken tells neither a token's length nor which one came close.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)
        if not self._digests:
            raise ValueError("a TokenChecker needs at least one token")

    def accepts(self, presented: str | None) -> bool:
        if presented is None:
            return False
        digest = _digest(presented)
        accepted = False
        for known in self._digests:
            accepted |= hmac.compare_digest(known, digest)
        return accepted


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


if TYPE_CHECKING:  # generic in the stubs only
    _Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class TokenInterceptor(_ServerInterceptor):
    """Refuses every call whose `metadata_key` does not carry a token `checker` accepts.

    The refusal is UNAUTHENTICATED with `reason` in its ErrorInfo, sent before the request
    is read or parsed. It is logged with the caller's address, never with what was
    presented. Methods of `open_services` (health, by default: kubelet probes carry no
    metadata, and health tells nothing) pass without a token.
    """

    def __init__(
        self,
        checker: TokenChecker,
        reason: Reason,
        *,
        metadata_key: str = SERVICE_TOKEN_KEY,
        open_services: Collection[str] = (HEALTH_SERVICE,),
    ) -> None:
        self._checker = checker
        self._key = metadata_key
        self._open = tuple(f"/{service}/" for service in open_services)
        self._missing = _refusal(MeshError.of(reason, "this service requires a service token"))
        self._wrong = _refusal(MeshError.of(reason, "the service token was not accepted"))

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler_call_details.method.startswith(self._open):
            return await continuation(handler_call_details)
        presented: str | None = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == self._key:
                presented = value if isinstance(value, str) else None
                break
        if self._checker.accepts(presented):
            return await continuation(handler_call_details)
        return self._missing if presented is None else self._wrong


def _refusal(error: MeshError) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that ends any call with `error`. Stream-stream, without a deserializer:
    grpc calls it at once, so nothing of the request is read, let alone parsed."""
    status = error.to_status()

    async def refuse(requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        log.warning("refused a call from %s: %s", context.peer(), error.message)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return grpc.stream_stream_rpc_method_handler(refuse)


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """How a gRPC server lets callers in: TLS credentials for its port (None: plaintext)
    and the interceptors that check each call. Pass `interceptors` to `grpc.aio.server`,
    then open the port with `add_port`."""

    credentials: grpc.ServerCredentials | None = None
    interceptors: tuple[grpc.aio.ServerInterceptor[Any, Any], ...] = ()

    @classmethod
    def tls_only(cls, tls: ServerTLS | None) -> ServerSecurity:
        return cls(server_credentials(tls) if tls is not None else None)

    @classmethod
    def for_adapter(cls, settings: AdapterServiceSettings) -> ServerSecurity:
        """An adapter service: its TLS, and routers' service tokens on every call."""
        checker = TokenChecker(resolve_token(ref) for ref in settings.tokens)
        return cls(
            server_credentials(settings.tls) if settings.tls is not None else None,
            (TokenInterceptor(checker, Reason.ADAPTER_UNAUTHENTICATED),),
        )

    def add_port(self, server: grpc.aio.Server, listen: str) -> int:
        """Binds `listen` ("host:port"; port 0 picks one); raises OSError when it cannot."""
        if self.credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, self.credentials)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        return port


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """How a client presents itself on a hop: channel credentials (None: plaintext), the
    channel options they need, and the metadata every call carries (the service token).

    The token travels as plain call metadata rather than grpc call credentials: those run a
    Python plugin on a worker thread for every call and refuse plaintext channels.
    """

    credentials: grpc.ChannelCredentials | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(
        cls,
        tls: ClientTLS | None,
        token: SecretRef | None,
        *,
        metadata_key: str = SERVICE_TOKEN_KEY,
    ) -> ClientSecurity:
        metadata = ((metadata_key, resolve_token(token)),) if token is not None else ()
        if tls is None:
            return cls(None, metadata)
        options: tuple[tuple[str, Any], ...] = ()
        if tls.server_name is not None:
            options = (("grpc.ssl_target_name_override", tls.server_name),)
        return cls(channel_credentials(tls), metadata, options)

    def channel(self, target: str, options: _ChannelOptions = ()) -> grpc.aio.Channel:
        """A channel to `target`, opened in the running event loop."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(target, options=[*options])
        return grpc.aio.secure_channel(target, self.credentials, options=[*options, *self.options])
