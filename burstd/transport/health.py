"""The standard gRPC health service (``grpc.health.v1.Health/Check``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from burstd.transport.errors import NotFound
from burstd.transport.messages import Metadata
from burstd.transport.methods import Service
from burstd.wire import HEALTH_SERVICE
from proto.grpc.health.v1 import health_pb2


def health_service(is_serving: Callable[[], bool], *, services: Sequence[str] = ()) -> Service:
    """The standard ``grpc.health.v1.Health`` service (``Check`` only).

    ``Check`` with an empty service name, or one in ``services``, answers SERVING when
    ``is_serving()`` is true and NOT_SERVING otherwise; any other name is NOT_FOUND, as the
    gRPC health protocol prescribes. Works with ``grpc_health_probe`` and similar tools.
    """
    known = frozenset(services)

    async def check(
        request: health_pb2.HealthCheckRequest, metadata: Metadata
    ) -> health_pb2.HealthCheckResponse:
        if request.service and request.service not in known:
            raise NotFound(f"unknown service {request.service!r}")
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=serving if is_serving() else not_serving)

    service = Service(HEALTH_SERVICE)
    service.unary("Check", health_pb2.HealthCheckRequest, check)
    return service
