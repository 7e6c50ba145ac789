"""burstd/wire.py: job ids, and the service names as the protos declare them."""

from __future__ import annotations

import pytest

from burstd import wire
from proto.burst.v1 import control_pb2, mux_pb2, peer_pb2
from proto.grpc.health.v1 import health_pb2


@pytest.mark.parametrize(
    ("first", "stop"),
    [(1, 1), (1, 2), (1, 100), (99, 101), (150, 150), (150, 451), (99_999_990, 100_000_120)],
)
def test_ids_in_bulk_are_the_ids_one_by_one(first: int, stop: int) -> None:
    # Across hundreds, from mid-hundred, empty, and past eight digits (where ids grow longer).
    assert wire.job_ids(first, stop) == [wire.job_id(n) for n in range(first, stop)]


def test_job_ids_are_the_prototypes_and_read_back() -> None:
    assert wire.job_id(1) == "job-00000001"
    assert wire.job_id(123_456_789) == "job-123456789"
    for number in (0, 1, 42, 10**8, 10**12):
        assert wire.JOB_ID.fullmatch(wire.job_id(number))
        assert wire.job_number(wire.job_id(number)) == number


@pytest.mark.parametrize(
    "text",
    ["", "job-", "job-1", "job-0000001x", "Job-00000001", "00000001",
     # past the store's 64-bit key, and digits of other scripts (int() reads them)
     "job-99999999999999999999", "job-\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661"],
)  # fmt: skip
def test_job_number_refuses_what_is_no_job_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        wire.job_number(text)


def test_a_submission_is_named_after_its_first_job() -> None:
    assert wire.alone("job-00000042") == wire.submission_id(42) == "sub-00000042"
    assert wire.submission_number("sub-123456789") == 123456789
    for text in ("", "sub-1", "job-00000001", "sub-99999999999999999999", "sub-0000000x"):
        with pytest.raises(ValueError, match="not a submission id"):
            wire.submission_number(text)


def test_service_names_are_the_protos() -> None:
    services = {
        wire.CONTROLLER_SERVICE: control_pb2.DESCRIPTOR.services_by_name["ControllerRpc"],
        wire.PEER_SERVICE: peer_pb2.DESCRIPTOR.services_by_name["WorkerPeerRpc"],
        wire.MUX_SERVICE: mux_pb2.DESCRIPTOR.services_by_name["Mux"],
        wire.HEALTH_SERVICE: health_pb2.DESCRIPTOR.services_by_name["Health"],
    }
    for name, descriptor in services.items():
        assert name == descriptor.full_name
