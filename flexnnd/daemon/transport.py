"""Transport: the gRPC servers, their TLS and bearer token, the Unix socket.

The Unix socket is guarded by its file mode; TCP needs TLS and a token, or a loopback address with
allow_insecure_loopback (Config checks that rule when it is built; here it is only applied).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from flexnn_api.proto import inference_pb2, inference_pb2_grpc
from flexnn_api.proto.flexnn.control.v1 import control_pb2, control_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flexnnd.daemon.config import Config
from flexnnd.errors import ConfigError

log = logging.getLogger("flexnnd")


class Servicers:
    """The servicers every server answers with: one set, shared by the socket's and TCP's servers."""

    def __init__(self, inference, control, health):
        self.inference, self.control, self.health = inference, control, health


def grpc_server(servicers: Servicers, max_bytes: int, workers: int, interceptors: list) -> grpc.Server:
    """A server with every service; its thread pool bounds the RPCs it runs at once."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flexnnd-rpc"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ],
        interceptors=interceptors,
        maximum_concurrent_rpcs=workers,
    )
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicers.inference, server)
    control_pb2_grpc.add_ControlServicer_to_server(servicers.control, server)
    health_pb2_grpc.add_HealthServicer_to_server(servicers.health, server)
    names = (
        inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server


def start_servers(config: Config, socket_path: Path, servicers: Servicers, workers: int) -> list[grpc.Server]:
    """The Unix socket (guarded by its file mode) and, if configured, TCP (TLS and a bearer token)."""
    max_bytes = config.max_message_bytes
    servers = []
    if config.tcp_address:
        token = read_token(config.token_file)
        tcp = grpc_server(
            servicers, max_bytes, workers, [TokenInterceptor(token)] if token is not None else []
        )
        add_tcp_port(tcp, config)
        servers.append(tcp)
    local = grpc_server(servicers, max_bytes, workers, [])
    if socket_path.exists() or socket_path.is_symlink():
        socket_path.unlink()  # ours: the instance lock is held, so no live daemon owns it
    if local.add_insecure_port(f"unix:{socket_path}") == 0:
        raise ConfigError(f"cannot bind the socket {socket_path}")
    servers.insert(0, local)
    for server in servers:
        server.start()
    os.chmod(socket_path, 0o660)
    return servers


def add_tcp_port(server: grpc.Server, config: Config) -> None:
    """TLS when configured, else the insecure loopback port that Config has already allowed."""
    address = config.tcp_address
    if config.tcp_tls:
        creds = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise ConfigError(f"cannot bind {address}")
    log.info("also serving on %s", address)


def stop_servers(servers: list[grpc.Server], grace: float, forced: Callable[[], bool]) -> None:
    """Stop accepting and let RPCs in flight finish within `grace` seconds (one more to wind
    down); `forced()` turning true (a second Ctrl-C) cancels them at once."""
    done = [server.stop(grace) for server in servers]
    deadline = time.monotonic() + grace + 1.0
    while not all(event.wait(0.1) for event in done):
        if forced():
            for server in servers:
                server.stop(0)
        if time.monotonic() > deadline:
            break


class TokenInterceptor(grpc.ServerInterceptor):
    """Bearer token on every RPC but health checks and ServerLive; compared in constant time."""

    EXEMPT = ("/grpc.health.v1.Health/", "/inference.GRPCInferenceService/ServerLive")

    def __init__(self, token: str):
        self._token = token.encode()

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer <token>' header is required"
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def authorized(self, metadata) -> bool:
        given = dict(metadata or ()).get("authorization", "")
        scheme, _, value = given.partition(" ")
        # compare_digest takes as long for a near miss as for a wild guess
        return hmac.compare_digest(value.strip().encode(), self._token) and scheme.lower() == "bearer"

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self.EXEMPT) or self.authorized(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)
        return self._deny


def read_token(path) -> str | None:
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token
