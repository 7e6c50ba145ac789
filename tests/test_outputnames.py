"""Output names: patterns, their checks, and where the last lines of a file start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from burstd import outputnames
from burstd.controller import admission
from burstd.worker.output import tail_offset
from proto.burst.v1 import job_pb2


def test_render_fills_every_placeholder() -> None:
    name = outputnames.render(
        "{submission}/{job_id}-{index}-{attempt}.out",
        job_id="job-00000001",
        index=4,
        attempt=2,
        submission="s1",
    )
    assert name == "s1/job-00000001-4-2.out"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "is empty"),
        ("/abs/{job_id}", "must be relative"),
        ("..", "may not leave the output folder"),
        ("x/../../y", "may not leave the output folder"),
        ("dir/", "names a folder"),
        ("{jobid}", "unknown placeholder {jobid}"),
        ("{job_id", "brace that is not part of a placeholder"),
        ("a}b", "brace that is not part of a placeholder"),
        ("a\0b", "NUL"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        outputnames.check_pattern(pattern)


def _spec(**fields: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"stdout_pattern": "../x"}, "spec.stdout_pattern: may not leave the output folder"),
        ({"stderr_pattern": "/x"}, "spec.stderr_pattern: must be relative"),
        ({"stdout_pattern": "{submission}"}, "uses {submission}, but the spec names none"),
        ({"stdout_pattern": "{index}"}, "uses {index}, but the job is not an array job"),
        ({"stdout_pattern": "a", "stderr_pattern": "a"}, "the same file as stdout_pattern"),
        ({"submission": "../up"}, "spec.submission: not a plain name"),
        ({"output_mode": "tape"}, "spec.output_mode: unknown mode"),
    ],
)
def test_the_controller_refuses_names_that_escape(fields: dict[str, str], message: str) -> None:
    with pytest.raises(admission.SpecError) as error:
        admission.admit_one(_spec(**fields), admission.Limits())
    assert message in str(error.value)


def test_an_array_template_may_use_its_index() -> None:
    request = job_pb2.SubmitJobsRequest(
        template=_spec(stdout_pattern="{index}.out"), array_start=0, array_count=3
    )
    assert len(admission.admit_batch(request, admission.Limits())) == 3


@pytest.mark.parametrize(
    ("text", "lines", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"", 3, b""),
        (b"\n\n\n", 2, b"\n\n"),
        (b"x" * 100 + b"\n" + b"y" * 100 + b"\n", 1, b"y" * 100 + b"\n"),
    ],
)
def test_tail_offset(tmp_path: Path, text: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        # A small block makes the search cross block borders.
        start = tail_offset(fd, lines, len(text), block=7)
    finally:
        os.close(fd)
    assert text[start:] == expected


def test_tail_offset_within_a_part(tmp_path: Path) -> None:
    """A stream-mode part is a byte range of a shared file: its tail never reaches before it."""
    path = tmp_path / "f"
    before, part, after = b"other\njob\n", b"p1\np2\np3\n", b"next job\n"
    path.write_bytes(before + part + after)
    start, end = len(before), len(before) + len(part)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tail_offset(fd, 2, end, start, block=4) == start + 3
        assert tail_offset(fd, 10, end, start, block=4) == start
    finally:
        os.close(fd)
