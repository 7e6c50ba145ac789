"""Prometheus metrics shared by both daemons: the HTTP endpoint, histograms, RPC timing,
event-loop lag.

Each daemon builds its own ``CollectorRegistry`` and serves it with :func:`serve_metrics` on
``--metrics-listen``. Every figure is kept in plain numbers, updated without a lock (a daemon
is one trio thread), and published by a collector at scrape time: a hot path pays an integer
increment, or a bisect for a histogram (:class:`Histogram`), never prometheus_client's locked
metric objects; prometheus_client still writes the exposition. The endpoint is a small trio
HTTP/1.1 handler, not prometheus_client's threaded server: a scrape then reads the daemon's
state between two of the event loop's steps, never while a step changes it. A daemon that
serves TLS (``tls_cert``, ``tls_key``) serves its metrics over HTTPS with the same certificate
(and, with ``tls_client_ca``, to scrapers that show a certificate that CA signed).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import trio
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from burstd import transport
from burstd.config import format_hostport
from burstd.transport.errors import sole_rpc_error
from burstd.transport.methods import Method

__all__ = ["Buckets", "Histogram", "LoopLag", "RpcMetrics", "serve_metrics"]

_go_float: Callable[[float], str] = floatToGoString  # typed here: untyped in prometheus_client

# A scrape request is a few hundred bytes; anything longer, or slower, is not Prometheus.
_MAX_REQUEST = 16 * 1024
_REQUEST_TIMEOUT = 10.0
# Event-loop lag is sampled this often (a sleep that overshoots by the lag).
LAG_INTERVAL = 0.5
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# RPC latencies: a poll may long-poll for seconds, a report takes a commit (milliseconds).
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


async def serve_metrics(
    listen: str,
    registry: CollectorRegistry,
    *,
    tls: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` in Prometheus's text format on ``listen`` (HOST:PORT, port 0: any free
    port) until cancelled, over HTTPS with ``tls`` (``burstd.transport.tls.server_context`` with
    ALPN ``http/1.1``); ``task_status.started`` gets the bound port. Every path answers the
    metrics (``/metrics`` is the usual one); only GET and HEAD are accepted. A scraper that does
    not finish its handshake and request within 10 s, or whose handshake fails, is closed."""
    from burstd.config import parse_hostport

    host, port = parse_hostport(listen)
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = int(listeners[0].socket.getsockname()[1])
    scheme = "http" if tls is None else "https"
    logger.info("metrics on {}://{}/metrics", scheme, format_hostport(host or "*", bound))
    task_status.started(bound)
    await trio.serve_listeners(functools.partial(_answer, registry=registry, tls=tls), listeners)


async def _answer(
    sock: trio.SocketStream, *, registry: CollectorRegistry, tls: ssl.SSLContext | None
) -> None:
    async with sock:
        stream: trio.abc.Stream = sock
        handshaken = tls is None
        request = b""
        with trio.move_on_after(_REQUEST_TIMEOUT):
            try:
                if tls is not None:
                    stream = secure = trio.SSLStream(
                        sock, tls, server_side=True, https_compatible=True
                    )
                    await secure.do_handshake()
                    handshaken = True
                while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    request += chunk
            except trio.BrokenResourceError as error:  # a failed handshake, or a reset
                logger.debug("metrics scraper dropped: {}", error.__cause__ or error)
                return
        if not handshaken:
            return  # not within the time
        method = request.split(b" ", 1)[0]
        if method in (b"GET", b"HEAD"):
            body = generate_latest(registry)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
        else:
            body = b"only GET and HEAD\n"
            head = "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(trio.BrokenResourceError), trio.move_on_after(_REQUEST_TIMEOUT):
            # (BrokenResourceError: the scraper went away.) Over TLS, aclose sends close_notify.
            await stream.send_all(head.encode() + (b"" if method == b"HEAD" else body))
            await stream.aclose()


class Buckets:
    """One histogram's figures (of one set of label values): how many observations fell at or
    below each bound (not cumulated), beyond the last bound, and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (Prometheus's ``le``: a value equal to a bound is in its
        bucket)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_all(self, values: list[float]) -> None:
        """Count every one of ``values`` (sorted here, in place), a negative one as 0: a batch
        costs a sort and a bisect a bound, not a Python step a value."""
        values.sort()
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect.bisect_right(values, bound)
            self.counts[i] += upto - below
            below = upto
        self.counts[-1] += len(values) - below
        self.sum += sum(values[bisect.bisect_left(values, 0.0) :])


class Histogram(Collector):
    """A histogram metric, published at scrape time: :meth:`labels` hands out the
    :class:`Buckets` of a set of label values (once; a hot path keeps it). Without labels there
    is one, always published; with labels, only those observed at least once are."""

    def __init__(
        self,
        name: str,
        doc: str,
        bounds: Sequence[float],
        registry: CollectorRegistry,
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.doc = doc
        self.bounds = tuple(bounds)
        self.labelnames = tuple(labelnames)
        # The ``le`` label of each bucket, as prometheus_client writes it ("1.0", "+Inf").
        self.les = [_go_float(bound) for bound in (*self.bounds, float("inf"))]
        self.children: dict[tuple[str, ...], Buckets] = {}
        if not self.labelnames:
            self.children[()] = Buckets(self.bounds)
        registry.register(self)

    def labels(self, *values: str) -> Buckets:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, given {values}")
        buckets = self.children.get(values)
        if buckets is None:
            buckets = self.children[values] = Buckets(self.bounds)
        return buckets

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, buckets in self.children.items():
            if values == () or any(buckets.counts):
                cumulated = zip(self.les, itertools.accumulate(buckets.counts), strict=True)
                family.add_metric(list(values), list(cumulated), buckets.sum)
        yield family


class LoopLag:
    """Event-loop lag: how late a sleep of LAG_INTERVAL wakes up (a busy loop answers late)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "burst_event_loop_lag_seconds",
            f"How late the event loop ran a task due to run (sampled every {LAG_INTERVAL} s).",
            _LAG_BUCKETS,
            registry,
        ).labels()

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await trio.sleep(LAG_INTERVAL)
            self.histogram.observe(max(0.0, time.perf_counter() - start - LAG_INTERVAL))


class RpcMetrics(Collector):
    """RPCs served, by method, with their latency; failures by method and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "burst_rpc_duration_seconds",
            "RPCs served, by method, and how long each took (long-polls included).",
            _RPC_BUCKETS,
            registry,
            ["method"],
        )
        self.errors: dict[tuple[str, str], int] = {}
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "burst_rpc_errors",
            "RPCs answered with an error, by method and gRPC status code.",
            labels=["method", "code"],
        )
        for labels, count in self.errors.items():
            errors.add_metric(list(labels), count)
        yield errors

    def instrument(self, service: transport.Service) -> transport.Service:
        """``service`` with every unary method timed (streaming ones are counted as errors
        only): the same name, guard and request types."""
        timed = transport.Service(service.name, service.authorize)
        for name, method in service.methods.items():
            if method.streaming:
                timed.methods[name] = method
            else:
                timed.methods[name] = Method(
                    method.request_type,
                    self._timed(name, method.handler),
                    False,
                    method.authorize,
                    method.mux,
                )
        return timed

    def _timed(
        self, name: str, handler: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        observe = self.latency.labels(name).observe  # looked up once, not per call
        errors = self.errors

        async def timed(request: Any, caller: Any) -> Any:
            start = time.perf_counter()
            try:
                return await handler(request, caller)
            except Exception as error:
                status = sole_rpc_error(error)
                code = status.code.name if status is not None else "INTERNAL"
                errors[name, code] = errors.get((name, code), 0) + 1
                raise
            finally:
                observe(time.perf_counter() - start)

        return timed
