"""Resources on the wire: ``burst.v1.Resources`` to and from the amounts of burstd/resources.py."""

from __future__ import annotations

from burstd.resources import CPUS, GPUS, MEM, Request, make_request
from proto.burst.v1 import job_pb2, worker_pb2

# JobSpec.resources (field 40, length-delimited) begins with these bytes in an encoded spec: a
# spec without them asks for nothing special, and is not decoded (``request_of_spec``).
_SPEC_RESOURCES_TAG = bytes([(40 << 3 | 2) & 0x7F | 0x80, (40 << 3 | 2) >> 7])


def request_of(message: worker_pb2.Resources) -> Request | None:
    """A job's request (None: the plain one); raises ValueError naming a bad amount."""
    return make_request(message.cpus or 1, message.mem, message.gpus, dict(message.named))


def offer_of(message: worker_pb2.Resources) -> dict[str, int]:
    """What a worker offers: every amount it names (CPUs and the rest)."""
    amounts = {CPUS: message.cpus, MEM: message.mem, GPUS: message.gpus, **message.named}
    return {name: amount for name, amount in amounts.items() if amount}


def to_message(amounts: Request | None) -> worker_pb2.Resources:
    """The message of a request or an offer (None: the plain request, an empty message)."""
    if amounts is None:
        return worker_pb2.Resources()
    named = {k: v for k, v in amounts.items() if k not in (CPUS, MEM, GPUS)}
    return worker_pb2.Resources(
        cpus=amounts.get(CPUS, 0), mem=amounts.get(MEM, 0), gpus=amounts.get(GPUS, 0), named=named
    )


def request_of_spec(spec: bytes) -> Request | None:
    """The request of an encoded JobSpec (as the store keeps it); most specs are not decoded."""
    if _SPEC_RESOURCES_TAG not in spec:
        return None
    decoded = job_pb2.JobSpec.FromString(spec)
    return request_of(decoded.resources) if decoded.HasField("resources") else None
