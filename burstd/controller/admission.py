"""Admission: what the controller accepts, checked before anything changes.

Every refusal is a ``SpecError`` whose message starts with the path of the bad field
(``spec.process.command: cannot be empty``), so a user sees what to fix and never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

from burstd import outputnames, placeholders, resources, resources_proto, wire
from burstd.controller.table import NewJob
from proto.burst.v1 import job_pb2

# Variables the worker sets itself: a spec may not set them (a job could otherwise fake its id).
RESERVED_ENV = frozenset((*wire.JOB_VARIABLES, *wire.JOB_OPTIONAL_VARIABLES))
MAX_RETRIES = 100
_ARRAY_INDEX_TAG = b"\x48"  # JobSpec.array_index: field 9, varint
_ENTRY_TAG = b"\x52"  # JobSpec.entry: field 10, length-delimited


class SpecError(ValueError):
    """A request the controller refuses; the message names the field."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_batch: int = 1_000_000
    max_spec_bytes: int = 65_536


def _no_nul(path: str, value: str) -> None:
    if "\x00" in value:
        raise SpecError(f"{path}: contains a NUL character")


def validate_spec(
    spec: job_pb2.JobSpec, path: str = "spec", given: frozenset[str] = frozenset()
) -> None:
    """Refuse ``spec`` naming its bad field. ``given``: the per-job values its jobs get besides
    the spec's own (``index`` for the template of an array, ``entry`` for one of entries)."""
    kind = spec.WhichOneof("type")
    if kind is None:
        raise SpecError(f"{path}: missing job type (process, python or docker)")
    if kind == "process":
        if not spec.process.command.strip():
            raise SpecError(f"{path}.process.command: cannot be empty")
        argv = [spec.process.command, *spec.process.args]
    elif kind == "python":
        if not spec.python.entry_point.strip():
            raise SpecError(f"{path}.python.entry_point: cannot be empty")
        argv = [spec.python.entry_point, *spec.python.args]
    else:
        if not spec.docker.image.strip():
            raise SpecError(f"{path}.docker.image: cannot be empty")
        argv = [spec.docker.image, *spec.docker.command, *spec.docker.args]
    for i, arg in enumerate(argv):
        _no_nul(f"{path}.{kind}.argv[{i}]", arg)
    given = given | _own_values(spec)
    first = 1 if kind == "docker" else 0  # placeholders go in the arguments, not the image
    for i, arg in enumerate(argv[first:], first):
        try:
            placeholders.check(arg, given)
        except ValueError as error:
            raise SpecError(f"{path}.{kind}.argv[{i}]: {error}") from None
    for key, value in spec.env.items():
        if not key or "=" in key:
            raise SpecError(f"{path}.env: invalid variable name {key!r}")
        if key in RESERVED_ENV:
            raise SpecError(f"{path}.env.{key}: is set by the worker and cannot be overridden")
        _no_nul(f"{path}.env.{key}", key + value)
    _no_nul(f"{path}.cwd", spec.cwd)
    _no_nul(f"{path}.output_dir", spec.output_dir)
    if not math.isfinite(spec.timeout_seconds) or spec.timeout_seconds < 0:
        raise SpecError(f"{path}.timeout_seconds: must be a finite number >= 0")
    if spec.retries > MAX_RETRIES:
        raise SpecError(f"{path}.retries: at most {MAX_RETRIES}")
    for i, job_id in enumerate(spec.after):
        if "," in job_id or not job_id.strip():
            raise SpecError(f"{path}.after[{i}]: not a job id: {job_id!r}")
    for i, code in enumerate(spec.retry_on_exit):
        if not 0 <= code <= 255:
            raise SpecError(f"{path}.retry_on_exit[{i}]: {code} is not an exit code (0-255)")
    if spec.crash_limit > wire.MAX_CRASH_LIMIT:
        raise SpecError(f"{path}.crash_limit: at most {wire.MAX_CRASH_LIMIT}")
    if abs(spec.priority) > wire.MAX_PRIORITY:
        raise SpecError(
            f"{path}.priority: {spec.priority} is not between"
            f" {-wire.MAX_PRIORITY} and {wire.MAX_PRIORITY}"
        )
    if not math.isfinite(spec.retry_delay_seconds) or spec.retry_delay_seconds < 0:
        raise SpecError(f"{path}.retry_delay_seconds: must be a finite number >= 0")
    _check_outputs(spec, path)


def _check_outputs(spec: job_pb2.JobSpec, path: str) -> None:
    """Output names stay inside the output folder (``burstd.outputnames``)."""
    for field in ("stdout_pattern", "stderr_pattern"):
        pattern = getattr(spec, field)
        if not pattern:
            continue
        try:
            outputnames.check_pattern(pattern)
        except ValueError as error:
            raise SpecError(f"{path}.{field}: {error}") from None
        if outputnames.uses(pattern, "submission") and not spec.submission:
            raise SpecError(f"{path}.{field}: uses {{submission}}, but the spec names none")
    if spec.stdout_pattern and spec.stdout_pattern == spec.stderr_pattern:
        raise SpecError(f"{path}.stderr_pattern: the same file as stdout_pattern")
    if spec.submission and outputnames.SUBMISSION.fullmatch(spec.submission) is None:
        raise SpecError(f"{path}.submission: not a plain name: {spec.submission!r}")
    if spec.output_mode not in ("", "stream"):
        raise SpecError(f"{path}.output_mode: unknown mode {spec.output_mode!r} (valid: stream)")
    if spec.output_mode and not spec.submission:
        raise SpecError(f"{path}.output_mode: stream needs the spec's submission")


def _own_values(spec: job_pb2.JobSpec) -> frozenset[str]:
    """The placeholders a spec's own fields fill (every job has its id)."""
    fields = (("index", "array_index"), ("entry", "entry"))
    return frozenset(("job_id", *(name for name, field in fields if spec.HasField(field))))


def _indexed(spec: job_pb2.JobSpec, path: str, given: frozenset[str]) -> None:
    """{index} names only the files of array jobs."""
    if "index" not in given and not spec.HasField("array_index"):
        for field in ("stdout_pattern", "stderr_pattern"):
            if outputnames.uses(getattr(spec, field), "index"):
                raise SpecError(f"{path}.{field}: uses {{index}}, but the job is not an array job")


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint (an int64's negatives as two's complement)."""
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]  # lengths and attempts: most are one byte
    # Array indices up to two million, without the loop (one in each array job's spec).
    if 0 <= value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 <= value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _check_size(path: str, size: int, limits: Limits, what: str = "") -> None:
    """A job's spec is checked whole, as the worker gets it (an array's index or an entry
    included): a larger one fails at spawn (E2BIG) after it was stored and queued."""
    if size > limits.max_spec_bytes:
        raise SpecError(
            f"{path}: {size} bytes{what}, more than the limit of {limits.max_spec_bytes}"
        )


def _checked(
    spec: job_pb2.JobSpec, path: str, limits: Limits, given: frozenset[str] = frozenset()
) -> bytes:
    validate_spec(spec, path, given)
    _indexed(spec, path, given)
    encoded: bytes = spec.SerializeToString()
    _check_size(path, len(encoded), limits)
    return encoded


def _check_array_size(base: bytes, last: int, limits: Limits) -> None:
    size = len(base) + len(_ARRAY_INDEX_TAG) + len(varint(last))
    _check_size("template", size, limits, f" with array index {last}")


def _request(spec: job_pb2.JobSpec, path: str) -> resources.Request | None:
    """What the job asks for (None: one CPU), its names and amounts checked."""
    if not spec.HasField("resources"):
        return None
    asked = spec.resources
    for name in asked.named:
        try:
            resources.parse_named([f"{name}=0"])
        except ValueError as error:
            raise SpecError(f"{path}.resources.named: {error}") from None
    try:
        return resources_proto.request_of(asked)
    except ValueError as error:
        raise SpecError(f"{path}.resources: {error}") from None


def admit_one(spec: job_pb2.JobSpec | None, limits: Limits) -> NewJob:
    if spec is None:
        raise SpecError("spec: missing job spec")
    return NewJob(
        _checked(spec, "spec", limits),
        spec.retries,
        spec.name,
        _request(spec, "spec"),
        *_policy(spec),
    )


_Policy = tuple[str, int, str, bool, int, float, int]


def _policy(spec: job_pb2.JobSpec) -> _Policy:
    """A spec's failure policy, dependencies and priority as the table keeps them
    (``NewJob``'s fields after ``request``)."""
    on_exit = ",".join(map(str, spec.retry_on_exit))
    return (
        on_exit,
        spec.crash_limit,
        ",".join(spec.after),
        spec.after_any,
        spec.priority,
        spec.retry_delay_seconds,
        spec.max_fails,
    )


def dependencies(specs: Iterable[job_pb2.JobSpec]) -> set[str]:
    """The job ids these specs wait for."""
    return {job_id for spec in specs for job_id in spec.after}


class ArrayJobs(Sequence[NewJob]):
    """The jobs of an array, each made when asked for: a caller builds a large array a slice
    at a time (``jobs[i:j]``), and until then it costs nothing."""

    def __init__(
        self,
        prefix: bytes,
        start: int,
        count: int,
        retries: int,
        name: str,
        step: int = 1,
        request: resources.Request | None = None,
        policy: _Policy = ("", 0, "", False, 0, 0.0, 0),
    ) -> None:
        self._prefix, self._start, self._count, self._step = prefix, start, count, step
        self._retries, self._name, self._request = retries, name, request
        self._policy = policy

    def __len__(self) -> int:
        return self._count

    @property
    def request(self) -> resources.Request | None:
        """What each of its jobs asks for."""
        return self._request

    @overload
    def __getitem__(self, index: int) -> NewJob: ...

    @overload
    def __getitem__(self, index: slice) -> list[NewJob]: ...

    def __getitem__(self, index: int | slice) -> NewJob | list[NewJob]:
        if isinstance(index, slice):
            prefix, retries, name, policy = self._prefix, self._retries, self._name, self._policy
            start, step, request = self._start, self._step, self._request
            return [
                NewJob(prefix + varint(start + i * step), retries, name, request, *policy)
                for i in range(*index.indices(self._count))
            ]
        if not -self._count <= index < self._count:
            raise IndexError("array job index out of range")
        return self[index : index + 1 or None][0]


def admit_batch(request: job_pb2.SubmitJobsRequest, limits: Limits) -> Sequence[NewJob]:
    """The jobs of a SubmitJobs call: the listed specs, then the template's array or entries.

    Array and entry jobs share the template's encoding with one field appended (protobuf keeps
    the last value of a repeated scalar field), so a million-job array costs one validation.
    """
    expanded = request.array_count or len(request.array_indices) or len(request.entries)
    if sum(map(bool, (request.array_count, request.array_indices, request.entries))) > 1:
        raise SpecError("array_count: array_count, array_indices and entries exclude each other")
    total = len(request.specs) + expanded
    if total == 0:
        raise SpecError("specs: no jobs to submit")
    if total > limits.max_batch:
        raise SpecError(f"specs: {total} jobs, more than the limit of {limits.max_batch} per call")
    jobs = [
        NewJob(
            _checked(spec, f"specs[{i}]", limits),
            spec.retries,
            spec.name,
            _request(spec, f"specs[{i}]"),
            *_policy(spec),
        )
        for i, spec in enumerate(request.specs, request.offset)
    ]
    if not expanded:
        return jobs
    if not request.HasField("template"):
        raise SpecError("template: required with array_count, array_indices or entries")
    template = request.template
    given = frozenset(("entry",) if request.entries else ("index",))
    base = _checked(template, "template", limits, given)
    retries, name = template.retries, template.name
    asked = _request(template, "template")
    policy = _policy(template)
    if request.array_count:
        start, step = request.array_start, request.array_step or 1
        # The largest index has the longest varint: if its job fits, every job does.
        last = start + (request.array_count - 1) * step
        if start < 0 or last >= 2**63:
            raise SpecError("array_start: out of range")
        _check_array_size(base, last, limits)
        array = ArrayJobs(
            base + _ARRAY_INDEX_TAG, start, request.array_count, retries, name, step, asked, policy
        )
        if not jobs:
            return array
        jobs.extend(array[:])
    elif request.array_indices:
        for i, index in enumerate(request.array_indices, request.offset):
            if index < 0:
                raise SpecError(f"array_indices[{i}]: must be >= 0, got {index}")
        _check_array_size(base, max(request.array_indices), limits)
        prefix = base + _ARRAY_INDEX_TAG
        jobs.extend(
            NewJob(prefix + varint(index), retries, name, asked, *policy)
            for index in request.array_indices
        )
    else:
        room = limits.max_spec_bytes - len(base) - len(_ENTRY_TAG)
        for i, entry in enumerate(request.entries, request.offset):
            _no_nul(f"entries[{i}]", entry)
            raw = entry.encode()
            length = varint(len(raw))
            if len(length) + len(raw) > room:
                size = len(base) + len(_ENTRY_TAG) + len(length) + len(raw)
                _check_size(f"entries[{i}]", size, limits, " with the template")
            jobs.append(NewJob(base + _ENTRY_TAG + length + raw, retries, name, asked, *policy))
    return jobs


def requests(new: Sequence[NewJob]) -> list[resources.Request]:
    """The distinct requests of jobs beside the plain one, in the order they come."""
    if isinstance(new, ArrayJobs):
        return [] if new.request is None else [new.request]
    seen: dict[int, resources.Request] = {}
    for job in new:
        if job.request is not None:
            seen.setdefault(id(job.request), job.request)
    return list(seen.values())


def require(value: str, path: str) -> str:
    if not value.strip():
        raise SpecError(f"{path}: cannot be empty")
    return value


def job_ids(ids: Sequence[str], path: str = "job_ids", limit: int = 1_000_000) -> list[str]:
    if len(ids) > limit:
        raise SpecError(f"{path}: more than {limit} ids")
    return [require(job_id, f"{path}[{i}]") for i, job_id in enumerate(ids)]
