"""gRPC ingress of a served model (``slimray serve ingress=grpc``): the service, its status codes and a client.

The service ``slimray.Model`` has one unary method per HTTP route, ``Predict`` (``/predict``) and
``Embed`` (``/embed``). Each carries the route's JSON body in a ``google.protobuf.BytesValue`` and
answers the same JSON in one: a gRPC client sends exactly what an HTTP client sends, and the
replica bounds, parses and answers it with the same code (``tasks.serving.deployment``), so the
two ingresses differ in their transport alone. Errors are gRPC status codes with the HTTP path's
one-line message as details (``STATUS``); the bearer token travels as ``authorization`` metadata.

Ray Serve's gRPC proxy takes the servicer as an import path (``SERVICER``) and routes a call to
the application named in the ``application`` metadata. In Ray 2.60 that proxy listens on every
interface (``[::]:<grpc_port>``), so ``ingress=grpc`` needs ``auth_token`` (``serve_config``).
"""

from __future__ import annotations

import json

import grpc
from google.protobuf.wrappers_pb2 import BytesValue

SERVICE = "slimray.Model"
METHODS = {"Predict": "/predict", "Embed": "/embed"}  # gRPC method -> the HTTP route it mirrors
SERVICER = f"{__name__}.add_servicer_to_server"
# the HTTP path's status -> the gRPC status code of the same error
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def add_servicer_to_server(servicer, server) -> None:
    """Add ``slimray.Model``'s methods to ``server`` (the signature of a protoc-generated
    ``add_*Servicer_to_server``, which Serve's gRPC proxy calls with a placeholder servicer)."""
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method),
            request_deserializer=BytesValue.FromString,
            response_serializer=BytesValue.SerializeToString,
        )
        for method in METHODS
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def reply(answer: dict) -> BytesValue:
    return BytesValue(value=json.dumps(answer).encode())


def stub(channel: grpc.aio.Channel | grpc.Channel, method: str):
    """A callable for ``method`` on ``channel``: ``call(BytesValue(value=body), metadata=...)``."""
    if method not in METHODS:
        raise ValueError(f"gRPC method '{method}' is not one of {sorted(METHODS)}")
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=BytesValue.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )


def metadata(app: str, token: str = "") -> tuple[tuple[str, str], ...]:
    """The call metadata: the Serve application to route to and, when set, the bearer token."""
    return (("application", app),) + ((("authorization", f"Bearer {token}"),) if token else ())
