"""The `burst` command line (cli/burst.py) without a controller: parsing, job specs, address
precedence, exit codes, and the output of each command against a fake client."""

from __future__ import annotations

import datetime
import io
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from burstd import arrays, transport, wire
from burstd.client import Submitted
from burstd.config import DEFAULT_ADDR, ConfigError
from burstd.transport import oneshot
from cli import burst, burstd, exitcodes
from cli.burst import (
    JobCommand,
    Progress,
    UsageError,
    build_spec,
    client_tls,
    client_token,
    controller_addr,
    job_dirs,
    parse_array,
    parse_env,
    prepare_argv,
    read_entries,
)
from cli.exitcodes import ExitCode
from proto.burst.v1 import job_pb2
from tests.cluster import REPO, environment
from tests.test_service import columns_of


class FakeClient:
    """Records the calls of one command and answers like a controller with canned data."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.columns: list[list[str]] = []  # list_columns's fields, per call
        self.infos: dict[str, job_pb2.JobInfo] = {}
        self.updates: list[job_pb2.WaitJobsUpdate] = []
        self.error: Exception | None = None
        self.next_id = 1
        self.store_error = ""  # as the last listing said

    def _ids(self, n: int) -> Submitted:
        ids = Submitted(
            wire.job_ids(self.next_id, self.next_id + n), wire.alone(wire.job_id(self.next_id))
        )
        self.next_id += n
        return ids

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def submit(self, spec: job_pb2.JobSpec) -> str:
        self._check()
        self.calls.append(("submit", spec))
        return self._ids(1)[0]

    async def submit_array(self, template: job_pb2.JobSpec, indices: str) -> list[str]:
        self.calls.append(("submit_array", (template, indices)))
        return self._ids(sum(map(len, arrays.parse(indices))))

    async def submit_entries(self, template: job_pb2.JobSpec, entries: Iterable[str]) -> list[str]:
        entries = list(entries)
        self.calls.append(("submit_entries", (template, entries)))
        return self._ids(len(entries))

    async def status(self, job_id: str) -> job_pb2.JobInfo:
        self._check()
        self.calls.append(("status", job_id))
        return self.infos.get(job_id, job_pb2.JobInfo(job_id=job_id, state="unknown"))

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        job_ids = list(job_ids)
        self.calls.append(("cancel", job_ids))
        return ["cancelled" for _ in job_ids]

    async def forget(self, job_ids: Iterable[str]) -> int:
        job_ids = list(job_ids)
        self.calls.append(("forget", job_ids))
        return len(job_ids) - 1

    async def forget_finished(self, older_than: float = 0.0) -> int:
        self.calls.append(("forget_finished", older_than))
        return 1

    async def list_page(
        self,
        state: str = "",
        after: str = "",
        limit: int = 1000,
        *,
        all_users: bool = False,
        submission_id: str = "",
        name: str = "",
        brief: bool = False,
    ) -> tuple[list[job_pb2.JobInfo], str]:
        self.calls.append(("list_page", (state, after, limit, all_users)))
        return self._page(state, after, limit, name)

    async def list_columns(
        self,
        columns: Sequence[str],
        state: str = "",
        after: str = "",
        limit: int = 1000,
        *,
        all_users: bool = False,
        submission_id: str = "",
        name: str = "",
    ) -> tuple[job_pb2.JobColumns, str]:
        self.calls.append(("list_columns", (state, after, limit, all_users)))
        self.columns.append(list(columns))
        page, after = self._page(state, after, limit, name)
        return columns_of(page, columns), after

    def _page(
        self, state: str, after: str, limit: int, name: str
    ) -> tuple[list[job_pb2.JobInfo], str]:
        ids = list(self.infos)
        matching = [
            info
            for info in list(self.infos.values())[ids.index(after) + 1 if after else 0 :]
            if (not state or info.state == state) and (not name or info.name == name)
        ]
        page = matching[:limit]
        return page, page[-1].job_id if len(matching) > limit else ""

    async def workers(self) -> list[job_pb2.WorkerInfo]:
        self.calls.append(("workers", None))
        return [
            job_pb2.WorkerInfo(
                worker_id="w1",
                hostname="host-a",
                slots=8,
                leased=3,
                running=2,
                last_seen_ago=0.25,
                state="draining",
            )
        ]

    async def wait(
        self, job_ids: Iterable[str] = (), *, all: bool = False, submission_id: str = ""
    ) -> AsyncIterator[job_pb2.WaitJobsUpdate]:
        self.calls.append(("wait", (list(job_ids), all)))
        for update in self.updates:
            yield update


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config file, no BURST_* variables (but a token), and no global logging set-up from
    the tests."""
    monkeypatch.chdir(tmp_path)
    for var in ("BURST_CONTROLLER", "BURST_LOG", "BURST_SLOTS", "BURST_LISTEN", "BURST_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BURST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BURST_TOKEN", "a-token")
    monkeypatch.setattr("burstd.logs.setup_logging", lambda *a, **k: None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    client = FakeClient()
    client.addrs = []  # type: ignore[attr-defined]
    client.tokens = []  # type: ignore[attr-defined]
    client.tls = []  # type: ignore[attr-defined]

    def connected(addr: str, token: str, tls: object) -> Any:
        client.addrs.append(addr)  # type: ignore[attr-defined]
        client.tokens.append(token)  # type: ignore[attr-defined]
        client.tls.append(tls)  # type: ignore[attr-defined]
        return client

    def in_trio(session: Any, addr: str, token: str, tls: object) -> int:
        return int(trio.run(session, connected(addr, token, tls)))

    def oneshot_run(session: Any, addr: str, token: str, tls: object) -> int:
        # As on the one-shot channel: the session must end without waiting for anything.
        return int(oneshot.run(session(connected(addr, token, tls))))

    monkeypatch.setattr(burst, "_run_trio", in_trio)
    monkeypatch.setattr(burst, "_run_oneshot", oneshot_run)
    yield client


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        burst.main(argv)
    code = exited.value.code
    return code if isinstance(code, int) else 0


# --------------------------------------------------------------------------------------------------
# job specs


def test_build_spec_keeps_args_verbatim() -> None:
    spec = build_spec(JobCommand("process", "ls", ("-la", "--", "--help", "a b")))
    assert spec.WhichOneof("type") == "process"
    assert spec.process.command == "ls"
    assert list(spec.process.args) == ["-la", "--", "--help", "a b"]


def test_build_spec_options() -> None:
    spec = build_spec(
        JobCommand("python", "-c", ("print(1)",)),
        output_dir="out",
        env=["A=1", "B=x=y", "C="],
        cwd="/data",
        timeout=2.5,
        retries=3,
        name="n",
    )
    assert spec.python.entry_point == "-c"
    assert list(spec.python.args) == ["print(1)"]
    assert spec.output_dir == "out"
    assert dict(spec.env) == {"A": "1", "B": "x=y", "C": ""}
    assert (spec.cwd, spec.timeout_seconds, spec.retries, spec.name) == ("/data", 2.5, 3, "n")
    docker = build_spec(JobCommand("docker", "alpine", ("echo", "-n", "hi")))
    assert docker.docker.image == "alpine"
    assert list(docker.docker.args) == ["echo", "-n", "hi"]
    assert not docker.HasField("output_dir")


def test_parse_env() -> None:
    assert parse_env(["K=V", "K=W", "E=", "X=a=b"]) == {"K": "W", "E": "", "X": "a=b"}
    for bad in ["NOEQUALS", "=value"]:
        with pytest.raises(UsageError, match=f"--env '{bad}'"):
            parse_env([bad])


def test_parse_array_is_inclusive() -> None:
    assert parse_array("3-5") == [range(3, 6)]
    assert parse_array("0-999") == [range(0, 1000)]
    assert parse_array("7") == [range(7, 8)]
    for bad in ["5-3", "a-b", "1-", "-1-3", ""]:
        with pytest.raises(UsageError, match="--array"):
            parse_array(bad)


def test_parse_array_steps_and_lists() -> None:
    assert parse_array("1-100:2") == [range(1, 101, 2)]
    assert parse_array("1,3,7-9") == [range(1, 2), range(3, 4), range(7, 10)]
    assert parse_array(" 1-10:3, 20,30-32") == [range(1, 11, 3), range(20, 21), range(30, 33)]
    assert [i for r in parse_array("1-10:3,20,30-32") for i in r] == [1, 4, 7, 10, 20, 30, 31, 32]
    # interleaved steps share no index
    assert parse_array("0-9:2,1-9:2") == [range(0, 10, 2), range(1, 10, 2)]
    assert parse_array("0-999999") == [range(1_000_000)]
    for bad, why in [
        ("1-10:0", "STEP must be at least 1"),
        ("1-10:", "expected N, START-END or START-END:STEP"),
        ("1,,3", "item '': expected"),
        ("1,", "item '': expected"),
        ("1:2", "item '1:2': expected"),
        ("1-5,3", "index 3 is listed twice"),
        ("0-100:10,5-25:5", "index 10 is listed twice"),
        ("0-99,40-50:2,200", "index 40 is listed twice"),
        ("10-1", "END is below START"),
    ]:
        with pytest.raises(UsageError, match=f"^--array '{re.escape(bad)}': .*{re.escape(why)}"):
            parse_array(bad)


def test_a_bad_array_spec_exits_2_naming_array(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["submit", "--array", "1-10:0", "process", "true"]) == ExitCode.USAGE
    assert "--array '1-10:0': " in capsys.readouterr().err
    assert fake.calls == []


def test_read_entries(tmp_path: Path) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("a\n\nb c\n-x\n")
    assert read_entries(str(path)) == ["a", "b c", "-x"]
    path.write_text("a\r\nb")  # CRLF; no final newline
    assert read_entries(str(path)) == ["a", "b"]
    # blank lines (empty or only whitespace, LF or CRLF) are no entries; the rest is verbatim
    path.write_bytes(b"\r\n a \r\n\r\n  \t\n\nlast\r\n\r\n")
    assert read_entries(str(path)) == [" a ", "last"]
    assert read_entries("-", stdin=io.StringIO("one\ntwo\n")) == ["one", "two"]
    assert read_entries("-", stdin=io.StringIO("")) == []
    with pytest.raises(UsageError, match=r"missing\.txt"):
        read_entries(str(tmp_path / "missing.txt"))


# --------------------------------------------------------------------------------------------------
# argv handling


def test_prepare_argv_marks_the_job_argv() -> None:
    assert prepare_argv(["submit", "process", "ls", "-la"]) == [
        "submit", "process", "--", "ls", "-la",
    ]  # fmt: skip
    argv = ["--controller", "h:1", "submit", "--name", "process", "python", "-c"]
    assert prepare_argv(argv) == [
        "--controller", "h:1", "submit", "--name", "process", "python", "--", "-c",
    ]  # fmt: skip
    assert prepare_argv(["submit", "process", "--", "ls"]) == ["submit", "process", "--", "ls"]
    for untouched in (
        ["submit", "process", "--help"],
        ["status", "-x"],
        ["submit", "--help"],
        ["submit", "--bogus", "process", "ls"],
        ["submit", "--env"],
    ):
        assert prepare_argv(untouched) == untouched


def test_prepare_argv_merges_every_env_into_one() -> None:
    argv = ["submit", "--env", "A=1", "--name", "n", "--env=B=2=3", "--env", "C=", "process"]
    assert prepare_argv([*argv, "env", "--env", "D=4"]) == [
        "submit", "--env", "A=1\0B=2=3\0C=", "--name", "n", "process", "--", "env", "--env", "D=4",
    ]  # fmt: skip
    one = ["submit", "--env", "A=1", "process", "--", "x"]
    assert prepare_argv(one) == one


class _TooManyCalls(BaseException):  # not caught by the `except Exception` of cyclopts
    pass


def _python_calls(argv: list[str], limit: int) -> int:
    """Python function calls made by ``burst.main(argv)`` (stopped beyond ``limit``)."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1
            if calls > limit:
                raise _TooManyCalls(f"more than {limit} calls")

    sys.setprofile(count)
    try:
        run(argv)
    finally:
        sys.setprofile(None)
    return calls


def test_many_env_options_parse_in_linear_time(fake: FakeClient) -> None:
    """cyclopts spends work proportional to the rest of the line on each option it binds: 3,000
    --env options took minutes of CPU. Counted in Python calls, not timed: linear growth makes
    3,000 options cost at most about 3 times 1,000 (a quadratic parse: 9 times)."""

    def argv(count: int) -> list[str]:
        return ["submit", *(t for i in range(count) for t in ("--env", f"K{i}=v")), "process", "x"]

    _python_calls(argv(10), limit=10**8)  # imports and caches warmed up
    small = _python_calls(argv(1000), limit=2_000_000)
    large = _python_calls(argv(3000), limit=4 * small)
    assert large <= 4 * small
    specs = [spec for call, spec in fake.calls if call == "submit"]
    assert len(specs[-1].env) == 3000 and specs[-1].env["K2999"] == "v"


@pytest.mark.parametrize(
    ("argv", "kind", "target", "args"),
    [
        (["process", "ls", "-la"], "process", "ls", ["-la"]),
        (["python", "-c", "print(1)"], "python", "-c", ["print(1)"]),
        (["python", "-m", "pkg", "--help"], "python", "-m", ["pkg", "--help"]),
        (["process", "sh", "-c", "echo $X", "--", "-v", "--version"], "process", "sh",
         ["-c", "echo $X", "--", "-v", "--version"]),
        (["process", "prog", "--name", "y", "--env", "Z=1"], "process", "prog",
         ["--name", "y", "--env", "Z=1"]),
        (["docker", "alpine", "ls", "-l", "/"], "docker", "alpine", ["ls", "-l", "/"]),
        (["process", "--", "-dash-prog"], "process", "-dash-prog", []),
    ],
)  # fmt: skip
def test_submit_passes_args_verbatim(
    fake: FakeClient,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    kind: str,
    target: str,
    args: list[str],
) -> None:
    assert run(["submit", "--name", "x", *argv]) == 0
    [(call, spec)] = fake.calls
    assert call == "submit"
    assert spec.name == "x"
    assert spec.WhichOneof("type") == kind
    body = getattr(spec, kind)
    first = {"process": "command", "python": "entry_point", "docker": "image"}[kind]
    assert getattr(body, first) == target
    assert list(body.args) == args
    assert capsys.readouterr().out == "job-00000001\n"


def test_submit_options(fake: FakeClient) -> None:
    argv = ["submit", "--env", "A=1", "--env=B=2", "--cwd", "/w", "--timeout", "1.5"]
    argv += ["--retries", "2", "--output-dir", "out", "process", "true"]
    assert run(argv) == 0
    [(_, spec)] = fake.calls
    assert dict(spec.env) == {"A": "1", "B": "2"}
    # (a relative output folder is taken in the job's working directory)
    assert (spec.cwd, spec.timeout_seconds, spec.retries, spec.output_dir) == (
        "/w",
        1.5,
        2,
        "/w/out",
    )


def test_relative_dirs_resolve_where_burst_submit_runs(
    fake: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert job_dirs("process", "/home/u/p") == ("/home/u/p", None)
    assert job_dirs("python", "/home/u/p", cwd="data/..//sub", output_dir="out") == (
        "/home/u/p/sub",
        "/home/u/p/sub/out",
    )
    assert job_dirs("process", "/home/u/p", cwd="/abs", output_dir="/o") == ("/abs", "/o")
    # docker: cwd is the container's (not defaulted); output, on the host, is taken here
    assert job_dirs("docker", "/home/u/p", output_dir="out") == (None, "/home/u/p/out")
    assert job_dirs("docker", "/home/u/p", cwd="/work") == ("/work", None)

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert run(["submit", "--output-dir", "out", "process", "./simulate"]) == 0
    assert run(["submit", "--cwd", "..", "python", "analyse.py"]) == 0
    first, second = (spec for _, spec in fake.calls)
    assert (first.cwd, first.output_dir) == (
        str(tmp_path / "project"),
        str(tmp_path / "project/out"),
    )
    assert (second.cwd, second.HasField("output_dir")) == (str(tmp_path), False)


def test_submit_array_is_one_batch_call(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["submit", "--array", "3-5", "process", "echo", "-n"]) == 0
    [(call, (template, indices))] = fake.calls
    assert call == "submit_array"
    assert indices == "3-5"
    assert list(template.process.args) == ["-n"]
    assert capsys.readouterr().out.split() == ["job-00000001", "job-00000002", "job-00000003"]


def test_submit_each_line_file_and_stdin(
    fake: FakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "in.txt").write_bytes(b"first\r\n\r\nsecond line\r\n\n")
    assert run(["submit", "--each-line", "in.txt", "process", "convert"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("x\ny\nz\n"))
    assert run(["submit", "--each-line", "-", "python", "job.py"]) == 0
    assert [call for call, _ in fake.calls] == ["submit_entries", "submit_entries"]
    assert fake.calls[0][1][1] == ["first", "second line"]
    assert fake.calls[1][1][1] == ["x", "y", "z"]
    assert len(capsys.readouterr().out.split()) == 5


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["submit", "--env", "NOVALUE", "process", "ls"], "--env 'NOVALUE'"),
        (["submit", "--array", "9-1", "process", "ls"], "--array '9-1'"),
        (["submit", "--bogus", "process", "ls"], "unknown option --bogus"),
        (["submit", "--array", "1-2", "--each-line", "f", "process", "ls"], "exclude"),
        (["submit", "--each-line", "missing.txt", "process", "ls"], "missing.txt"),
        (["wait"], "--all"),
        (["wait", "--all", "job-1"], "--all"),
        (["status"], "job id"),
        (["--config", "missing.toml", "status", "j"], "missing.toml"),
        (["--controller", "nocolon", "status", "j"], "cli.controller_addr"),
    ],
)
def test_usage_and_config_errors_exit_2(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("burst: error: ")
    assert needle in err
    assert "Traceback" not in err
    assert not fake.calls


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus", "status", "j"],
        ["status", "--bogus", "j"],
        ["submit", "--bogus", "process", "ls"],
        ["submit", "--retries", "many", "process", "ls"],
        ["submit", "--retries", "-1", "process", "ls"],
        ["submit", "process"],
        ["submit", "shell", "ls"],
        ["list", "--state", "sleeping"],
        ["list", "--limit", "0"],
        ["wait", "--all", "--timeout", "soon"],
        ["nosuchcommand"],
    ],
)
def test_bad_command_lines_exit_2(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert run(argv) == 2
    assert not fake.calls
    assert "Traceback" not in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("submit", "status", "wait", "cancel", "list", "workers", "--controller"):
        assert command in out
    assert run(["submit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--array" in out and "--each-line" in out and "process" in out
    assert run(["submit", "process", "--help"]) == 0
    assert "CMD" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "commands"),
    [
        (
            [],
            [
                burst.status,
                burst.cancel,
                burst.forget,
                burst.list_jobs,
                burst.info,
                burst.wait,
                burst.logs,
                burst.workers,
                burst.drain,
                burst.undrain,
                burst.events,
                burst.top,
                burst.resubmit,
            ],
        ),
        (["submit"], [burst.process, burst.python, burst.docker]),
    ],
)
def test_help_describes_every_command(argv: list[str], commands: list[Any]) -> None:
    """Commands are registered by import path (cyclopts builds one only when it runs), yet help
    lists each with its docstring's first words. A fresh process: here, earlier tests have built
    some of them."""
    run = subprocess.run(
        [sys.executable, "-m", "cli.burst", *argv, "--help"],
        cwd=REPO,
        env={**environment(), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for function in commands:
        name = "list" if function is burst.list_jobs else function.__name__
        words = " ".join(function.__doc__.split()[:3]).replace("`", "")
        assert re.search(rf"^\W+{name} +{re.escape(words)}", run.stdout, re.MULTILINE), name


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "job-1"],
        ["status", "job-1", "nope", "job-2"],
        ["status"],
        ["submit", "process", "true"],
        ["submit", "python", "-c", "print(1)"],
        ["submit", "process", "echo", "--", "--help", "-x", "--env", "A=1"],
        ["submit", "process", "--", "--", "x"],
        ["submit", "docker", "alpine:3", "--rm"],
    ],
)
def test_a_line_without_options_runs_as_cyclopts_would(
    fake: FakeClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    """`burst status ID...` and `burst submit KIND TARGET...` with no option skip cyclopts
    (`_direct`): through cyclopts, the same line makes the same calls, prints the same and exits
    the same."""
    fake.infos["job-1"] = _info("job-1", "running")
    taken: list[object] = []
    direct = burst._direct
    monkeypatch.setattr(burst, "_direct", lambda tokens: taken.append(direct(tokens)) or taken[0])
    first = (run(argv), capsys.readouterr(), list(fake.calls))
    assert taken[0] is not None
    fake.calls.clear()
    fake.next_id = 1
    monkeypatch.setattr(burst, "_direct", lambda tokens: None)
    assert (run(argv), capsys.readouterr(), fake.calls) == first


# --------------------------------------------------------------------------------------------------
# the controller address


def test_controller_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert controller_addr(env={}) == DEFAULT_ADDR == "127.0.0.1:50051"
    config = tmp_path / "c.toml"
    config.write_text('[cli]\ncontroller_addr = "from-file:1"\n')
    assert controller_addr(None, config, env={}) == "from-file:1"
    env = {"BURST_CONTROLLER": "http://from-env:2"}
    assert controller_addr(None, config, env=env) == "from-env:2"
    assert controller_addr("http://from-flag:3/", config, env=env) == "from-flag:3"
    # the prototype's JSON file, found in the working directory
    (tmp_path / "burst.config.json").write_text('{"cli": {"controller_addr": "json-file:4"}}')
    assert controller_addr(env={}) == "json-file:4"
    (tmp_path / "burst.toml").write_text('[cli]\ncontroller_addr = "toml-file:5"\n')
    assert controller_addr(env={}) == "toml-file:5"
    with pytest.raises(ConfigError, match="BURST_CONTROLLER"):
        controller_addr(env={"BURST_CONTROLLER": "no-port"})


def test_controller_precedence_through_main(
    fake: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    addrs: list[str] = fake.addrs  # type: ignore[attr-defined]
    fake.infos["j"] = _info("j", "queued")
    assert run(["status", "j"]) == 0
    (tmp_path / "burst.toml").write_text('[cli]\ncontroller_addr = "cwd-file:1"\n')
    assert run(["status", "j"]) == 0
    other = tmp_path / "other.toml"
    other.write_text('[cli]\ncontroller_addr = "other-file:2"\n')
    assert run(["--config", str(other), "status", "j"]) == 0
    monkeypatch.setenv("BURST_CONTROLLER", "env-host:3")
    assert run(["--config", str(other), "status", "j"]) == 0
    assert run(["--controller", "flag-host:4", "--config", str(other), "status", "j"]) == 0
    assert run(["submit", "--controller", "http://flag-host:5", "process", "ls"]) == 0
    assert run(["status", "j", "--controller", "flag-host:6"]) == 0
    assert addrs == [
        "127.0.0.1:50051", "cwd-file:1", "other-file:2", "env-host:3",
        "flag-host:4", "flag-host:5", "flag-host:6",
    ]  # fmt: skip
    # after the command, --controller is the job's argument, not ours
    assert run(["submit", "process", "ls", "--controller", "x:1"]) == 0
    assert addrs[-1] == "env-host:3"
    assert list(fake.calls[-1][1].process.args) == ["--controller", "x:1"]


# --------------------------------------------------------------------------------------------------
# the token


def test_token_precedence(tmp_path: Path) -> None:
    """--token-file, then BURST_TOKEN, then cli.token_file, then the state directory's
    admin.token (--state-dir, else BURST_STATE_DIR, else controller.state_dir)."""
    state, other = tmp_path / "state", tmp_path / "other"
    state.mkdir()
    other.mkdir()
    (state / "admin.token").write_text("from-state-dir\n")
    (other / "admin.token").write_text("from-flag-dir\n")
    (tmp_path / "flag.token").write_text(" from-flag \n")
    (tmp_path / "file.token").write_text("from-config\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[cli]\ntoken_file = "{tmp_path / "file.token"}"\n')
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[controller]\nstate_dir = "{state}"\n')
    env = {"BURST_TOKEN": "from-env", "BURST_STATE_DIR": str(state)}
    assert client_token(tmp_path / "flag.token", None, config, env) == "from-flag"
    assert client_token(None, None, config, env) == "from-env"
    assert client_token(None, None, config, {}) == "from-config"
    assert client_token(None, None, bare, {}) == "from-state-dir"
    assert client_token(None, None, None, {"BURST_STATE_DIR": str(state)}) == "from-state-dir"
    assert client_token(None, other, None, {"BURST_STATE_DIR": str(state)}) == "from-flag-dir"
    with pytest.raises(UsageError, match=r"admin\.token: cannot read"):
        client_token(None, tmp_path / "nowhere", None, {})
    (state / "admin.token").write_text("\n")
    with pytest.raises(UsageError, match="empty token file"):
        client_token(None, None, bare, {})


def test_tls_precedence(tmp_path: Path) -> None:
    """--tls-ca, then BURST_TLS_CA, then cli.tls_ca (each missing file is named: the one used);
    none: no TLS; a client certificate without a CA is refused naming cli.tls_ca."""
    from burstd import certs

    config = tmp_path / "c.toml"
    config.write_text(f'[cli]\ntls_ca = "{tmp_path / "config.pem"}"\n')
    env = {"BURST_TLS_CA": str(tmp_path / "env.pem")}
    with pytest.raises(UsageError, match=r"cli\.tls_ca: .*flag\.pem"):
        client_tls(tmp_path / "flag.pem", None, None, config, env)
    with pytest.raises(UsageError, match=r"env\.pem"):
        client_tls(None, None, None, config, env)
    with pytest.raises(UsageError, match=r"config\.pem"):
        client_tls(None, None, None, config, {})
    assert client_tls(None, None, None, None, {}) is None
    with pytest.raises(UsageError, match=r"cli\.tls_ca: a client certificate"):
        client_tls(None, tmp_path / "c.pem", tmp_path / "k.pem", None, {})
    certs.init(tmp_path / "pki", ["localhost"])
    context = client_tls(tmp_path / "pki" / "ca.pem", None, None, None, {})
    assert context is not None and context.get_ca_certs()


def test_the_token_reaches_the_client(
    fake: FakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens: list[str] = fake.tokens  # type: ignore[attr-defined]
    (tmp_path / "t").write_text("from-file\n")
    assert run(["--token-file", str(tmp_path / "t"), "list"]) == 0
    assert run(["list"]) == 0
    monkeypatch.delenv("BURST_TOKEN")
    assert run(["list"]) == 2  # no token anywhere: a usage error, nothing sent
    assert tokens == ["from-file", "a-token"]


# --------------------------------------------------------------------------------------------------
# commands against the fake client


def _info(job_id: str, state: str, **fields: Any) -> job_pb2.JobInfo:
    return job_pb2.JobInfo(job_id=job_id, state=state, **fields)


def test_status(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.infos["job-1"] = _info("job-1", "failed", exit_code=3, reason="exit", worker_id="w1")
    assert run(["status", "job-1", "nope"]) == ExitCode.NO_SUCH_JOB
    assert capsys.readouterr().out == "job-1 failed\nnope unknown\n"
    assert run(["status", "--json", "job-1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job_id"] == "job-1"
    assert data["exit_code"] == 3
    assert data["worker_id"] == "w1"
    assert "lost_count" in data and "error_message" in data  # every field, with preserved names
    # the prototype's form
    assert run(["status", "--job-id", "job-1", "--job-id", "nope"]) == ExitCode.NO_SUCH_JOB
    assert capsys.readouterr().out == "job-1 failed\nnope unknown\n"


def test_status_json_has_every_key_and_iso_times(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.infos["job-1"] = _info(
        "job-1", "failed", reason="timeout", signal=15, submitted_at=1.5, started_at=1800000000.25
    )
    fake.infos["job-2"] = _info("job-2", "succeeded", exit_code=0, finished_at=1800000000.0)
    assert run(["status", "--json", "job-1", "job-2", "job-3"]) == ExitCode.NO_SUCH_JOB
    timed_out, succeeded, unknown = map(json.loads, capsys.readouterr().out.splitlines())
    assert timed_out.keys() == succeeded.keys() == unknown.keys()
    assert list(timed_out) == [field.name for field in job_pb2.JobInfo.DESCRIPTOR.fields]
    assert (timed_out["exit_code"], succeeded["exit_code"], unknown["exit_code"]) == (None, 0, None)
    assert timed_out["submitted_at"] == "1970-01-01T00:00:01.500000Z"
    assert timed_out["started_at"] == "2027-01-15T08:00:00.250000Z"
    assert (timed_out["finished_at"], succeeded["started_at"]) == (None, None)
    assert succeeded["finished_at"] == "2027-01-15T08:00:00.000000Z"


def test_cancel(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cancel", "job-1", "job-2"]) == 0
    assert fake.calls == [("cancel", ["job-1", "job-2"])]
    assert capsys.readouterr().out == "job-1 cancelled\njob-2 cancelled\n"


def test_forget(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["forget", "job-1", "job-2", "job-3"]) == 0
    assert capsys.readouterr().out == "forgot 2 jobs\n"
    assert run(["forget", "--finished"]) == 0
    assert capsys.readouterr().out == "forgot 1 job\n"
    assert run(["forget", "--finished", "--older-than", "3600"]) == 0
    assert fake.calls == [
        ("forget", ["job-1", "job-2", "job-3"]),
        ("forget_finished", 0.0),
        ("forget_finished", 3600.0),
    ]
    for argv in (
        ["forget"],
        ["forget", "--finished", "job-1"],
        ["forget", "job-1", "--older-than", "5"],
        ["forget", "--finished", "--older-than", "-1"],
    ):
        assert run(argv) == 2, argv
    assert len(fake.calls) == 3  # nothing sent for a bad command line


@pytest.mark.parametrize(
    ("argv", "fields"),
    [
        (
            ["list"],
            ["job_id", "state", "worker_id", "reason", "has_exit_code", "exit_code", "signal",
             "name"],
        ),
        (
            ["list", "--format", "id,state,exit,submitted"],
            ["job_id", "state", "has_exit_code", "exit_code", "submitted_at"],
        ),
        (["list", "--format", "id,command"], ["job_id", "command"]),
        (["list", "--format", "user_cpu,max_rss_kib"], ["usage", "has_usage"]),
    ],
)  # fmt: skip
def test_a_table_asks_only_for_the_fields_it_shows(
    fake: FakeClient, argv: list[str], fields: list[str]
) -> None:
    """A table is listed as columns, each field once, only those its columns show: the
    controller decodes each job's spec only for the command column."""
    fake.infos = {"job-1": _info("job-1", "queued")}
    assert run(argv) == 0
    assert fake.columns == [fields]
    assert run(["list", "--json"]) == 0
    assert fake.calls[-1][0] == "list_page"  # everything known, a JobInfo a job
    assert len(fake.columns) == 1


def test_list(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.infos = {
        "job-1": _info("job-1", "succeeded", exit_code=0, reason="exit", worker_id="w1"),
        "job-2": _info("job-2", "failed", signal=9, reason="signal", worker_id="w2"),
        "job-3": _info("job-3", "queued"),
        "job-4": _info("job-4", "failed", reason="timeout", worker_id="w1"),
    }
    assert run(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "job-1 succeeded w1 exit 0 -",
        "job-2 failed w2 signal 9 -",
        "job-3 queued - - -",
        "job-4 failed w1 timeout -",
    ]
    assert run(["list", "--state", "failed", "--limit", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["job-2 failed w2 signal 9 -"]
    assert fake.calls[-1] == ("list_columns", ("failed", "", 1, False))
    fake.infos["job-1"].owner = "alice"
    assert run(["list", "--all-users", "--limit", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["job-1 alice succeeded w1 exit 0 -"]
    assert fake.calls[-1] == ("list_columns", ("", "", 1, True))
    # the name is a column, and a filter
    fake.infos["job-4"].name = "render"
    assert run(["list", "--name", "render"]) == 0
    assert capsys.readouterr().out.splitlines() == ["job-4 failed w1 timeout render"]
    # --format: the columns named, in order; an unknown one is refused, named
    fake.infos["job-2"].submission_id = "sub-00000002"
    fake.infos["job-2"].submitted_at = 1_800_000_000.0
    assert run(["list", "--format", "submission,id,exit,signal,started", "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "- job-1 0 - -",
        "sub-00000002 job-2 - 9 -",
    ]
    assert run(["list", "--format", "submitted", "--state", "failed", "--limit", "1"]) == 0
    local = datetime.datetime.fromtimestamp(1_800_000_000.0).strftime("%Y-%m-%d %H:%M:%S")
    assert capsys.readouterr().out.splitlines() == [local]
    # every other column
    fake.infos["job-1"].attempts.add(
        attempt=1,
        usage=job_pb2.Usage(user_cpu_seconds=0.5, system_cpu_seconds=0.25, max_rss_kib=2048),
    )
    fake.infos["job-1"].command.extend(["echo", "hi"])
    fake.infos["job-1"].priority = -3
    fake.infos["job-1"].attempt = 1
    everything = "owner,priority,attempt,reason,user_cpu,system_cpu,max_rss_kib,command,finished"
    assert run(["list", "--format", everything, "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "alice -3 1 exit 0.500 0.250 2048 echo hi -",
        "- 0 0 signal - - - - -",
    ]
    assert run(["list", "--format", "id,colour"]) == 2
    assert "--format: unknown column 'colour'" in capsys.readouterr().err
    assert run(["list", "--json"]) == 0
    assert [json.loads(line)["job_id"] for line in capsys.readouterr().out.splitlines()] == [
        "job-1", "job-2", "job-3", "job-4",
    ]  # fmt: skip


def test_workers(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["workers"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ID", "HOST", "SLOTS", "LEASED", "RUNNING", "LAST", "SEEN", "STATE"]
    assert row.split() == ["w1", "host-a", "8", "3", "2", "0.2s", "ago", "draining"]
    assert run(["workers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hostname"] == "host-a"


def _update(total: int, pending: int, ok: int, failed: int = 0, cancelled: int = 0,
            finished: Iterable[job_pb2.JobInfo] = ()) -> job_pb2.WaitJobsUpdate:  # fmt: skip
    return job_pb2.WaitJobsUpdate(
        total=total, pending=pending, succeeded=ok, failed=failed, cancelled=cancelled,
        finished=list(finished),
    )  # fmt: skip


def test_wait_all_succeeded(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake.updates = [_update(3, 3, 0), _update(3, 1, 2), _update(3, 0, 3)]
    assert run(["wait", "--all"]) == 0
    assert fake.calls == [("wait", ([], True))]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1].startswith("burst: 3/3 done: 3 succeeded, 0 failed")


def test_wait_reports_failures(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    failed = _info(
        "job-2", "failed", reason="exit", exit_code=1, error_message="exited with code 1"
    )
    cancelled = _info("job-3", "cancelled", reason="cancelled")
    fake.updates = [
        _update(3, 3, 0),
        _update(3, 1, 1, failed=1, finished=[_info("job-1", "succeeded"), failed]),
        _update(3, 0, 1, failed=1, cancelled=1, finished=[cancelled]),
    ]
    assert run(["wait", "job-1", "job-2", "job-3"]) == 1
    assert fake.calls == [("wait", (["job-1", "job-2", "job-3"], False))]
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "job-2 failed exit: exited with code 1",
        "job-3 cancelled cancelled",
    ]
    assert "1 succeeded, 1 failed, 1 cancelled" in captured.err.splitlines()[-1]


def test_wait_timeout(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    class Forever(FakeClient):
        async def wait(
            self, job_ids: Iterable[str] = (), *, all: bool = False, submission_id: str = ""
        ) -> AsyncIterator[job_pb2.WaitJobsUpdate]:
            import trio

            yield _update(2, 2, 0)
            await trio.sleep_forever()
            yield _update(2, 0, 2)  # pragma: no cover

    fake.__class__ = Forever
    assert run(["wait", "--timeout", "0.05", "job-1", "job-2"]) == ExitCode.TIMEOUT
    assert "timed out after 0.05 s: 2 of 2 jobs not ended" in capsys.readouterr().err


def test_progress_plain_lines_at_most_once_a_second() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, tty=False, clock=lambda: now[0])
    for step in range(10):  # ten updates within 0.9 s: one line
        now[0] = step * 0.1
        progress.update(_update(100, 100 - step, step))
    now[0] = 1.5
    progress.update(_update(100, 50, 50))
    progress.update(_update(100, 0, 99, failed=1))  # the last one: the summary says it
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1] == "burst: 50/100 done: 50 succeeded, 0 failed, 0 cancelled, 33.3 jobs/s"
    assert (
        lines[2]
        == "burst: 100/100 done: 99 succeeded, 1 failed, 0 cancelled in 1.5 s (66.7 jobs/s)"
    )


def test_progress_rates_are_over_the_jobs_waited_for_since_their_submission() -> None:
    """Issue 17, defect 8: jobs that ended before the wait began count too, on the
    controller's clock from the first one's submission; no "0.0 jobs/s" before any ended."""
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, tty=False, clock=lambda: now[0])

    def at(sent_at: float, pending: int) -> job_pb2.WaitJobsUpdate:
        update = _update(100, pending, 100 - pending)
        update.sent_at, update.first_submitted_at = 1_000.0 + sent_at, 1_000.0
        return update

    progress.update(at(0.0, 100))  # submitted just now: none ended, no rate yet
    now[0] = 1.0
    progress.update(at(10.0, 50))  # 50 ended, the first 40 before this wait began
    now[0] = 2.0
    progress.update(at(20.0, 0))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "burst: 0/100 done: 0 succeeded, 0 failed, 0 cancelled",
        "burst: 50/100 done: 50 succeeded, 0 failed, 0 cancelled, 5.0 jobs/s",
        "burst: 100/100 done: 100 succeeded, 0 failed, 0 cancelled in 2.0 s (5.0 jobs/s)",
    ]


def test_submit_wait_waits_for_what_it_submitted(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = job_pb2.JobInfo(job_id="job-00000002", state="failed", reason="exit", exit_code=3)
    fake.updates = [_update(2, 2, 0), _update(2, 0, 1, failed=1, finished=[failed])]
    assert run(["submit", "--wait", "--array", "1-2", "process", "true"]) == 1
    assert fake.calls[-1] == ("wait", (["job-00000001", "job-00000002"], False))
    out = capsys.readouterr().out.splitlines()
    assert out == ["job-00000001", "job-00000002", "job-00000002 failed exit: exit 3"]
    fake.updates = [_update(1, 0, 1)]
    assert run(["submit", "--wait", "process", "true"]) == 0
    assert fake.calls[-1] == ("wait", (["job-00000003"], False))


def test_progress_bar_redraws_in_place() -> None:
    stream = io.StringIO()
    progress = Progress(stream, tty=True, clock=lambda: 0.0)
    progress.update(_update(10, 5, 5))
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\x1b[K") and "\n" not in text
    assert "5/10" in text
    progress.close()
    assert stream.getvalue().endswith("0 cancelled in 0.0 s\n")  # (no rate: none ended)


# --------------------------------------------------------------------------------------------------
# errors from the controller


def test_rpc_errors_exit_with_their_code(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.error = transport.NotFound("job_id: unknown job 'x'")
    assert run(["status", "x"]) == ExitCode.NO_SUCH_JOB
    err = capsys.readouterr().err
    assert err == "burst: error: NOT_FOUND: job_id: unknown job 'x'\n"
    fake.error = transport.InvalidArgument("spec.process.command: empty")
    assert run(["submit", "process", " "]) == ExitCode.USAGE
    fake.error = transport.ResourceExhausted("queue full")
    assert run(["submit", "process", "x"]) == ExitCode.FAILED
    assert (
        capsys.readouterr().err.splitlines()[-1] == "burst: error: RESOURCE_EXHAUSTED: queue full"
    )


def test_unreachable_controller_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run(["--controller", f"127.0.0.1:{port}", "status", "job-1"]) == ExitCode.UNREACHABLE
    err = capsys.readouterr().err
    assert f"cannot reach controller at 127.0.0.1:{port}" in err
    assert err.startswith("burst: error: ") and "Traceback" not in err


def test_burstd_up_gives_each_worker_at_least_two_slots() -> None:
    # 2 workers on 2 CPUs: 2 slots each (1 each left every worker idle between its jobs).
    assert burstd.up_slots(workers=2, cpus=2) == 2
    assert burstd.up_slots(workers=4, cpus=2) == 2
    assert burstd.up_slots(workers=2, cpus=16) == 8  # a share of a bigger machine, as before


def test_one_exit_code_table_in_the_readme_and_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert exitcodes.table() in readme
    assert run(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for code in ExitCode:
        assert f"{code.value}: {code.meaning}" in shown
