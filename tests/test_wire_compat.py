"""Wire compatibility with the Rust prototype.

`tests/compat/seed_proto/burst/v1/*.proto` are the prototype's own protos (latest numbering, no
burst extensions). From them this test generates the prototype's Python and gRPC stubs with
`grpc_tools.protoc`, and:

* compares their descriptors with ours: every message, field (number, type, label, oneof) and
  method of the prototype must still be there, unchanged;
* drives a real controller with the official grpcio client built from them, as the prototype's
  CLI and worker did: submit every job kind, read the status, register, poll, report.

The client runs in a subprocess that imports only the prototype's stubs: they register the same
full names (`burst.v1.JobSpec`...) as our `proto.burst.v1` modules, and protobuf's default
descriptor pool refuses two different definitions of one name in a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from tests.cluster import Cluster

REPO = Path(__file__).resolve().parent.parent
SEED_ROOT = REPO / "tests" / "compat" / "seed_proto"
SEED_FILES = [f"burst/v1/{name}.proto" for name in ("worker", "job", "peer", "control")]
OUR_FILES = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "proto" / "burst" / "v1").glob("*.proto")
)

pytest.importorskip("grpc_tools")
pytest.importorskip("grpc")


def protoc(include: Path, files: list[str], *out_args: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", *out_args, *files],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=include,
    )
    assert run.returncode == 0, f"protoc failed: {run.stderr}"


@pytest.fixture(scope="module")
def seed_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seed_stubs")
    protoc(SEED_ROOT, SEED_FILES, f"--python_out={out}", f"--grpc_python_out={out}")
    for name in ("job_pb2", "worker_pb2", "peer_pb2", "control_pb2", "control_pb2_grpc"):
        assert (out / "burst" / "v1" / f"{name}.py").exists()
    return out


# -- the descriptors: nothing of the prototype's was renumbered, retyped or removed ------------


def descriptor_set(include: Path, files: list[str], out: Path) -> descriptor_pb2.FileDescriptorSet:
    protoc(include, files, f"--descriptor_set_out={out}", "--include_imports")
    result = descriptor_pb2.FileDescriptorSet()
    result.ParseFromString(out.read_bytes())
    return result


def index(files: descriptor_pb2.FileDescriptorSet) -> tuple[dict[str, Any], dict[str, Any]]:
    """(messages, methods) by full name, with what matters on the wire."""
    messages: dict[str, Any] = {}
    methods: dict[str, Any] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        fields = {}
        for f in message.field:
            oneof = ""
            if f.HasField("oneof_index") and not f.proto3_optional:
                oneof = message.oneof_decl[f.oneof_index].name
            fields[f.number] = (f.name, f.type, f.label, f.type_name, oneof, f.proto3_optional)
        messages[name] = fields
        for nested in message.nested_type:
            add(name, nested)

    for file in files.file:
        if not file.package.startswith("burst."):
            continue
        for message in file.message_type:
            add(file.package, message)
        for service in file.service:
            for m in service.method:
                methods[f"/{file.package}.{service.name}/{m.name}"] = (
                    m.input_type,
                    m.output_type,
                    m.client_streaming,
                    m.server_streaming,
                )
    return messages, methods


def test_prototype_messages_and_methods_are_unchanged_in_ours(tmp_path: Path) -> None:
    seed_messages, seed_methods = index(descriptor_set(SEED_ROOT, SEED_FILES, tmp_path / "s.pb"))
    our_messages, our_methods = index(descriptor_set(REPO, OUR_FILES, tmp_path / "o.pb"))
    assert len(seed_messages) == 20 and len(seed_methods) == 7  # the fixture is complete

    problems = []
    for name, fields in seed_messages.items():
        ours = our_messages.get(name)
        if ours is None:
            problems.append(f"message {name} is gone")
            continue
        for number, field in fields.items():
            if ours.get(number) != field:
                problems.append(
                    f"{name} field {number}: prototype {field}, ours {ours.get(number)}"
                )
    for path, method in seed_methods.items():
        if our_methods.get(path) != method:
            problems.append(f"{path}: prototype {method}, ours {our_methods.get(path)}")
    assert problems == []


# -- the prototype's official client against a real controller -------------------------------

CLIENT = textwrap.dedent(
    """
    import json
    import sys

    sys.path.insert(0, sys.argv[1])

    import grpc
    from burst.v1 import control_pb2_grpc, job_pb2, worker_pb2

    T = 30
    TOKEN = [("authorization", "Bearer " + sys.argv[3])]


    class WithToken(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            return continuation(details._replace(metadata=TOKEN), request)


    out = {}
    with grpc.insecure_channel(sys.argv[2]) as plain:
        grpc.channel_ready_future(plain).result(timeout=T)
        try:
            control_pb2_grpc.ControllerRpcStub(plain).GetJobStatus(
                job_pb2.GetJobStatusRequest(job_id="job-00000001"), timeout=T
            )
        except grpc.RpcError as error:
            out["without token"] = error.code().name
        channel = grpc.intercept_channel(plain, WithToken())
        stub = control_pb2_grpc.ControllerRpcStub(channel)

        def submit(spec):
            return stub.SubmitJob(job_pb2.SubmitJobRequest(spec=spec), timeout=T).job_id

        def state(job_id):
            reply = stub.GetJobStatus(job_pb2.GetJobStatusRequest(job_id=job_id), timeout=T)
            return [reply.job_id, reply.state]

        ids = {
            "process": submit(
                job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="echo", args=["hi", "-n"]))
            ),
            "python": submit(
                job_pb2.JobSpec(
                    output_dir="/tmp/burst-out",
                    python=job_pb2.PythonSpec(entry_point="-c", args=["print(1)"]),
                )
            ),
            "docker": submit(
                job_pb2.JobSpec(
                    docker=job_pb2.DockerSpec(image="alpine", command=["sh"], args=["-c", "true"])
                )
            ),
        }
        out["ids"] = ids
        out["queued"] = {kind: state(job_id) for kind, job_id in ids.items()}
        out["unknown"] = state("job-99999999")

        errors = {}
        for name, request in [
            ("missing spec", job_pb2.SubmitJobRequest()),
            ("blank command", job_pb2.SubmitJobRequest(
                spec=job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="  "))
            )),
            ("no type", job_pb2.SubmitJobRequest(spec=job_pb2.JobSpec(output_dir="x"))),
        ]:
            try:
                stub.SubmitJob(request, timeout=T)
                errors[name] = "accepted"
            except grpc.RpcError as error:
                errors[name] = [error.code().name, error.details()]
        out["errors"] = errors
        try:
            stub.RegisterWorker(worker_pb2.RegisterWorkerRequest(worker_id=" "), timeout=T)
        except grpc.RpcError as error:
            out["blank worker"] = error.code().name

        registered = stub.RegisterWorker(
            worker_pb2.RegisterWorkerRequest(worker_id="seed-worker", slots=1, queue_capacity=1),
            timeout=T,
        )
        out["registered"] = registered.accepted
        beat = stub.Heartbeat(worker_pb2.HeartbeatRequest(worker_id="seed-worker"), timeout=T)
        out["heartbeat"] = beat.ok

        exit_codes = {"process": 0, "python": 3, "docker": 0}
        leased = []
        for _ in range(3):
            reply = stub.PollJob(job_pb2.PollJobRequest(worker_id="seed-worker"), timeout=T)
            job = reply.job
            kind = job.spec.WhichOneof("type")
            target = getattr(job.spec, kind)
            leased.append({
                "result": reply.WhichOneof("result"),
                "job_id": job.job_id,
                "kind": kind,
                "fields": [list(x) if not isinstance(x, str) else x for x in (
                    getattr(target, name) for name in ("command", "entry_point", "image", "args")
                    if hasattr(target, name)
                )],
                "output_dir": job.spec.output_dir if job.spec.HasField("output_dir") else None,
                "state": state(job.job_id)[1],
            })
            code = exit_codes[kind]
            report = stub.ReportJobResult(
                job_pb2.ReportJobResultRequest(
                    worker_id="seed-worker",
                    job_id=job.job_id,
                    exit_code=code,
                    error_message="" if code == 0 else "exit status 3",
                ),
                timeout=T,
            )
            leased[-1]["accepted"] = report.accepted
        out["leased"] = leased
        reply = stub.PollJob(job_pb2.PollJobRequest(worker_id="seed-worker"), timeout=T)
        out["then"] = reply.WhichOneof("result")
        out["final"] = {kind: state(job_id)[1] for kind, job_id in ids.items()}
    print(json.dumps(out))
    """
)


def test_prototype_client_submits_polls_and_reports(
    cluster: Cluster, seed_stubs: Path, tmp_path: Path
) -> None:
    cluster.controller()
    script = tmp_path / "seed_client.py"
    script.write_text(CLIENT)
    # Only the prototype's stubs are importable in there (not the repository's proto package).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, str(script), str(seed_stubs), cluster.addr, cluster.token()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)

    # With the token (metadata authorization: Bearer ...) it works; without, it is refused.
    assert out["without token"] == "UNAUTHENTICATED"
    ids = out["ids"]
    assert sorted(ids) == ["docker", "process", "python"]
    for job_id in ids.values():
        assert job_id.startswith("job-") and len(job_id) == 12 and job_id[4:].isdigit()
    assert len(set(ids.values())) == 3
    assert out["queued"] == {kind: [job_id, "queued"] for kind, job_id in ids.items()}
    assert out["unknown"] == ["job-99999999", "unknown"]

    errors = out["errors"]
    assert errors["missing spec"][0] == "INVALID_ARGUMENT"
    assert "spec" in errors["missing spec"][1]
    assert errors["blank command"] == [
        "INVALID_ARGUMENT",
        "spec.process.command: cannot be empty",
    ]
    assert errors["no type"][0] == "INVALID_ARGUMENT"
    assert "missing job type" in errors["no type"][1]
    assert out["blank worker"] == "INVALID_ARGUMENT"

    assert out["registered"] is True
    assert out["heartbeat"] is True
    # capacity 1: one job per poll, in submission order, each `leased` while held
    assert out["leased"] == [
        {
            "result": "job",
            "job_id": ids["process"],
            "kind": "process",
            "fields": ["echo", ["hi", "-n"]],
            "output_dir": None,
            "state": "leased",
            "accepted": True,
        },
        {
            "result": "job",
            "job_id": ids["python"],
            "kind": "python",
            "fields": ["-c", ["print(1)"]],
            "output_dir": "/tmp/burst-out",
            "state": "leased",
            "accepted": True,
        },
        {
            "result": "job",
            "job_id": ids["docker"],
            "kind": "docker",
            "fields": [["sh"], "alpine", ["-c", "true"]],
            "output_dir": None,
            "state": "leased",
            "accepted": True,
        },
    ]
    assert out["then"] == "empty"
    assert out["final"] == {"process": "succeeded", "python": "failed", "docker": "succeeded"}

    # what burst itself shows of the prototype's jobs
    run = cluster.burst("status", "--json", ids["process"], ids["python"])
    process, python = (json.loads(line) for line in run.stdout.splitlines())
    assert (process["state"], process["exit_code"], process["worker_id"]) == (
        "succeeded",
        0,
        "seed-worker",
    )
    assert (python["state"], python["exit_code"], python["error_message"]) == (
        "failed",
        3,
        "exit status 3",
    )
