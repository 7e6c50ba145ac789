"""Names and formats that both ends of the wire agree on, each written once.

The ``.proto`` files are the contract for messages and services; this module holds what the
contract names as text: the gRPC service names (``tests/test_wire.py`` checks them against
the generated descriptors), the job id format, and the variables a worker gives each job. It
imports only the standard library, so the job table and the store process can use it.
"""

from __future__ import annotations

import re
from typing import Final

CONTROLLER_SERVICE: Final = "burst.v1.ControllerRpc"
"""The controller's service (``control.proto``), for the CLI, the client and the workers."""

PEER_SERVICE: Final = "burst.v1.WorkerPeerRpc"
"""A worker's StealJobs service (``peer.proto``)."""

MUX_SERVICE: Final = "burst.v1.Mux"
"""Unary calls multiplexed over one stream (``mux.proto``), served beside every service."""

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
"""The standard health service (``Check`` only)."""

MAX_PRIORITY: Final = 1000
"""A job's priority (``JobSpec.priority``) is between minus this and this."""

MAX_CRASH_LIMIT: Final = 100
"""The highest crash limit a job may ask for (``JobSpec.crash_limit``)."""

JOB_ID_PREFIX: Final = "job-"
JOB_ID_DIGITS: Final = 8
"""A job id is the prefix and the job's number, zero-padded to at least this many digits
(``job-00000001``), as the prototype's ids were: they sort as the jobs were submitted."""

JOB_ID: Final = re.compile(rf"{JOB_ID_PREFIX}[0-9]{{{JOB_ID_DIGITS},}}")
"""The ids :func:`job_id` makes (match with ``fullmatch``)."""

JOB_VARIABLES: Final = ("BURST_JOB_ID", "BURST_WORKER_ID", "BURST_ATTEMPT")
"""Variables the worker sets in every job's environment, last, so a spec cannot fake them."""

JOB_OPTIONAL_VARIABLES: Final = ("BURST_ARRAY_INDEX", "BURST_ENTRY")
"""Variables set for jobs of an array (the index) or of ``--each-line`` (the entry) only."""

_TWO_DIGITS: Final = [f"{i:02d}" for i in range(100)]


def job_id(number: int) -> str:
    """The id of job ``number`` (``job-00000042``)."""
    # (zfill: far cheaper than a nested format spec, and a listing formats one id per job)
    return JOB_ID_PREFIX + str(number).zfill(JOB_ID_DIGITS)


def job_ids(first: int, stop: int) -> list[str]:
    """The ids of the numbers ``first`` up to ``stop`` (excluded), as :func:`job_id` makes them.

    By hundreds: one string concatenation a job, cheaper than formatting each number (a large
    submission formats one id per job; docs/benchmarks.md).
    """
    ids: list[str] = []
    for hundred in range(first // 100, (stop - 1) // 100 + 1):
        base = hundred * 100
        head = f"{JOB_ID_PREFIX}{hundred:0{JOB_ID_DIGITS - 2}d}"
        ids += map(head.__add__, _TWO_DIGITS[max(first - base, 0) : stop - base])
    return ids


MAX_JOB_NUMBER: Final = 2**63 - 1
"""The largest job number (the store's key is a signed 64-bit integer)."""


def job_number(text: str) -> int:
    """The number of a job id; ValueError if ``text`` is not one (also for a number past
    MAX_JOB_NUMBER, which no job has)."""
    return _number(text, JOB_ID, len(JOB_ID_PREFIX), "a job id")


def _number(text: str, pattern: re.Pattern[str], prefix: int, what: str) -> int:
    """The number after the ``prefix`` characters of an id that ``pattern`` matches whole, up
    to MAX_JOB_NUMBER; ValueError naming ``what`` it is not otherwise."""
    if not pattern.fullmatch(text) or (number := int(text[prefix:])) > MAX_JOB_NUMBER:
        raise ValueError(f"not {what}: {text!r}")
    return number


SUBMISSION_ID_PREFIX: Final = "sub-"
SUBMISSION_ID: Final = re.compile(rf"{SUBMISSION_ID_PREFIX}[0-9]{{{JOB_ID_DIGITS},}}")
"""A submission's id: the prefix and the number of its first job, as a job id has it
(``sub-00000042``, whose first job is ``job-00000042``)."""


def submission_id(number: int) -> str:
    """The id of the submission whose first job is numbered ``number``."""
    return SUBMISSION_ID_PREFIX + str(number).zfill(JOB_ID_DIGITS)


def alone(job_id: str) -> str:
    """The id of the submission of a job submitted alone (numbered as the job)."""
    return submission_id(job_number(job_id))


def submission_number(text: str) -> int:
    """The number of a submission id; ValueError if ``text`` is not one."""
    return _number(text, SUBMISSION_ID, len(SUBMISSION_ID_PREFIX), "a submission id")
