"""Placeholders in a job's command (burstd/placeholders.py): checked at submission by the
controller, filled by the worker at spawn from the job's own values."""

from __future__ import annotations

from pathlib import Path

import pytest

from burstd import placeholders
from burstd.controller import admission
from burstd.worker.executor import ExecConfig, SpecError, build_argv
from proto.burst.v1 import job_pb2

ALL = frozenset(placeholders.PLACEHOLDERS)


def test_fill_replaces_each_placeholder_and_doubled_ones_are_literal() -> None:
    values = {"index": "7", "entry": "a b;c", "job_id": "job-00000001"}
    assert placeholders.fill("in/{entry}.txt", values) == "in/a b;c.txt"
    assert placeholders.fill("{job_id}-{index}{index}", values) == "job-00000001-77"
    assert placeholders.fill("{{index}} {{job_id}}", values) == "{index} {job_id}"
    assert placeholders.fill("plain", values) == "plain"
    # a value is not read again for placeholders
    assert placeholders.fill("{entry}", {"entry": "{index}"}) == "{index}"


@pytest.mark.parametrize(
    "arg",
    [
        "{print $1}",  # awk
        'echo "${HOME}" ${x-1} ${#x}',  # a shell's own
        "cp file.{a,b} {} {Index} {nope}",  # brace expansion, find's {}, unknown names
        '{"key": [1, 2]}',  # JSON
        "{{ .Name }} }} {{ {",  # template languages, lone braces
    ],
)
def test_other_braces_pass_as_they_are(arg: str) -> None:
    """Commands written for the prototype (no placeholders) and for shells keep working."""
    placeholders.check(arg, ALL)
    placeholders.check(arg, ())
    assert placeholders.fill(arg, {"index": "7", "entry": "e", "job_id": "j"}) == arg


def test_check_refuses_a_value_the_job_does_not_have() -> None:
    placeholders.check("{job_id} {{entry}}", {"job_id"})
    with pytest.raises(ValueError, match="needs --array"):
        placeholders.check("{index}", {"job_id", "entry"})
    with pytest.raises(ValueError, match="needs --each-line"):
        placeholders.check("x{entry}", {"job_id", "index"})


def _template(*args: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="echo", args=args))


def test_the_controller_refuses_a_placeholder_without_a_value_naming_the_argument() -> None:
    limits = admission.Limits()
    admission.admit_one(_template("ok", "{nope}", "{print $1}"), limits)
    with pytest.raises(admission.SpecError, match=r"^spec\.process\.argv\[1\]: \{index\} needs"):
        admission.admit_one(_template("{index}"), limits)
    array = job_pb2.SubmitJobsRequest(template=_template("{index}", "{job_id}"), array_count=2)
    assert len(admission.admit_batch(array, limits)) == 2
    array.template.process.args.append("{entry}")
    with pytest.raises(admission.SpecError, match=r"^template\.process\.argv\[3\]: \{entry\}"):
        admission.admit_batch(array, limits)
    entries = job_pb2.SubmitJobsRequest(template=_template("{entry}"), entries=["a"])
    assert len(admission.admit_batch(entries, limits)) == 1
    docker = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="img", args=["{job_id}", "{index}"]))
    with pytest.raises(admission.SpecError, match=r"^spec\.docker\.argv\[2\]: \{index\}"):
        admission.admit_one(docker, limits)


def test_the_worker_fills_the_argv_of_each_kind(tmp_path: Path) -> None:
    config = ExecConfig(worker_id="w1", output_dir=tmp_path, python="py", docker="docker")
    spec = _template("{index}", "[{job_id}]")
    spec.array_index = 4
    assert build_argv("job-00000009", 1, spec, config) == ["echo", "4", "[job-00000009]"]
    python = job_pb2.JobSpec(python=job_pb2.PythonSpec(entry_point="{entry}.py"), entry="x y")
    assert build_argv("job-00000009", 1, python, config) == ["py", "x y.py"]
    docker = job_pb2.JobSpec(docker=job_pb2.DockerSpec(image="img", command=["{job_id}"]))
    assert build_argv("job-00000009", 1, docker, config)[-2:] == ["img", "job-00000009"]
    with pytest.raises(SpecError, match=r"argument 1: \{index\} needs --array"):
        build_argv("job-00000009", 1, _template("{index}"), config)
