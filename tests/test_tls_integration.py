"""TLS end to end, with real `burstd` and `burst` processes (docs/security.md, "TLS"): the
daemons' and the CLI's flags and config keys, `burstd tls init`, mutual TLS, a grpcio client of
the prototype's stubs over TLS, steals between workers over TLS, and the refusal to listen off
loopback in clear text unless --insecure."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509

from burstd import certs, tlsconfig, transport
from burstd.client import BlockingClient
from tests.cluster import Cluster, Daemon, environment, eventually, free_port, program, scrape
from tests.test_wire_compat import seed_stubs  # noqa: F401 (a fixture)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, server and client certificates from `burstd tls init`, as a user makes them."""
    folder = tmp_path / "pki"
    done = subprocess.run(
        [*program("burstd"), "tls", "init", str(folder), "--host", "ctl.example", "10.9.8.7"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(folder / name) for name in certs.FILES]
    return folder


def server_flags(pki: Path) -> list[str]:
    return ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server-key.pem")]


def worker_flags(pki: Path) -> list[str]:
    return ["--tls-ca", str(pki / "ca.pem"), *server_flags(pki)]


def test_tls_init_writes_a_ca_and_certificates_for_the_hosts(pki: Path) -> None:
    for name in certs.FILES:
        mode = stat.S_IMODE((pki / name).stat().st_mode)
        assert mode == 0o600 if name.endswith("-key.pem") else mode & 0o044 == 0o044, name
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    shown = {str(getattr(name.value, "compressed", name.value)) for name in names}
    assert shown == {"ctl.example", "10.9.8.7", "localhost", "127.0.0.1", "::1"}

    again = [*program("burstd"), "tls", "init", str(pki), "--host", "other"]
    done = subprocess.run(again, capture_output=True, text=True, timeout=60, env=environment())
    assert done.returncode == 2
    assert "ca.pem exists" in done.stderr and "--force" in done.stderr
    before = (pki / "ca.pem").read_bytes()
    done = subprocess.run(
        [*again, "--force"], capture_output=True, text=True, timeout=60, env=environment()
    )
    assert done.returncode == 0, done.stderr
    assert (pki / "ca.pem").read_bytes() != before


def test_a_cluster_over_tls_runs_jobs_and_workers_steal_over_it(
    cluster: Cluster, pki: Path
) -> None:
    cluster.controller(*server_flags(pki))
    peer = ("--peer-listen", "127.0.0.1:0", *worker_flags(pki))
    cluster.worker("w1", *peer, "--queue-capacity", "64", slots=1)
    ca = ("--tls-ca", str(pki / "ca.pem"))
    deadline = time.monotonic() + 60
    while not cluster.burst(*ca, "workers", "--json").stdout.strip():
        assert time.monotonic() < deadline, "w1 did not register over TLS"
        time.sleep(0.2)
    # w1 holds a long job and the short ones behind it; w2, started late, can only steal them.
    long_job = cluster.burst(*ca, "submit", "process", "sleep", "15").stdout.strip()
    short = cluster.burst(*ca, "submit", "--array", "1-3", "process", "true").stdout.split()
    deadline = time.monotonic() + 60
    while json.loads(cluster.burst(*ca, "workers", "--json").stdout)["leased"] < 4:
        assert time.monotonic() < deadline, "w1 did not lease all four jobs"
        time.sleep(0.2)
    cluster.worker("w2", *peer, slots=1)
    cluster.burst(*ca, "wait", long_job, *short, "--timeout", "90", timeout=120)
    out = cluster.burst(*ca, "status", "--json", long_job, *short).stdout
    infos = [json.loads(line) for line in out.splitlines()]
    assert [info["state"] for info in infos] == ["succeeded"] * 4
    stolen = [info for info in infos if info["worker_id"] == "w2"]
    assert stolen and all(info["stolen"] for info in stolen), infos
    logs = cluster.daemons[1].log() + cluster.daemons[2].log()
    assert "over TLS" in cluster.daemons[0].log() and "over TLS" in logs


def test_daemons_with_a_certificate_serve_their_metrics_over_https(
    cluster: Cluster, pki: Path
) -> None:
    """Prometheus scrapes them with the cluster's CA (``scheme: https``, ``tls_config.ca_file``);
    a plain HTTP scrape gets no metrics."""
    ctl_metrics, worker_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster.controller(*server_flags(pki), "--metrics-listen", ctl_metrics)
    cluster.worker("w1", *worker_flags(pki), "--metrics-listen", worker_metrics)
    ca = ssl.create_default_context(cafile=pki / "ca.pem")

    def scraped(addr: str) -> dict[str, float] | None:
        try:
            return scrape(addr, ca)
        except OSError:  # not listening yet
            return None

    for addr in (ctl_metrics, worker_metrics):
        samples = eventually(lambda addr=addr: scraped(addr), f"the metrics of {addr}")
        assert any(name.startswith("burst_event_loop_lag_seconds") for name in samples)
    for addr in (ctl_metrics, worker_metrics):
        with pytest.raises((OSError, http.client.HTTPException)):
            scrape(addr)
    assert f"metrics on https://{ctl_metrics}/metrics" in cluster.daemons[0].log()


def test_a_client_without_the_ca_or_with_another_is_refused(
    cluster: Cluster, pki: Path, tmp_path: Path
) -> None:
    cluster.controller(*server_flags(pki))
    plain = cluster.burst("list", check=False, timeout=60)
    assert plain.returncode == 3, plain.stderr  # unreachable: it speaks no TLS
    assert "--tls-ca" in plain.stderr
    other = tmp_path / "other"
    certs.init(other, ["localhost"])
    wrong = cluster.burst("--tls-ca", str(other / "ca.pem"), "list", check=False)
    assert wrong.returncode == 3
    assert "CERTIFICATE_VERIFY_FAILED" in wrong.stderr
    # the variable, as a config key would, turns TLS on
    env = {**cluster.env, "BURST_TLS_CA": str(pki / "ca.pem")}
    assert cluster.burst("list", env=env).returncode == 0
    # a file that cannot be read is named, exit 2
    missing = cluster.burst("--tls-ca", str(tmp_path / "nope.pem"), "list", check=False)
    assert missing.returncode == 2 and "nope.pem" in missing.stderr


def test_mutual_tls_serves_clients_with_a_certificate_only(cluster: Cluster, pki: Path) -> None:
    cluster.controller(*server_flags(pki), "--tls-client-ca", str(pki / "ca.pem"))
    ca = ("--tls-ca", str(pki / "ca.pem"))
    anonymous = cluster.burst(*ca, "list", check=False)
    assert anonymous.returncode == 3, anonymous.stderr
    mine = ("--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client-key.pem"))
    # a worker shows its own certificate
    cluster.worker("w1", *worker_flags(pki))
    job = cluster.burst(*ca, *mine, "submit", "--wait", "process", "true").stdout.split()[0]
    assert cluster.burst(*ca, *mine, "status", "--json", job).stdout
    # burstd token reaches it the same way
    listed = subprocess.run(
        [*program("burstd"), "token", "list", "--controller", cluster.addr, *ca, *mine],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env,
    )
    assert listed.returncode == 0 and "admin" in listed.stdout, listed.stderr


def test_the_python_client_takes_the_ca_from_the_environment(
    cluster: Cluster, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.controller(*server_flags(pki))
    monkeypatch.setenv("BURST_TLS_CA", str(pki / "ca.pem"))
    with BlockingClient(cluster.addr, token=cluster.token()) as client:
        assert client.workers() == []
    monkeypatch.delenv("BURST_TLS_CA")
    with (
        pytest.raises(transport.Unavailable),
        BlockingClient(cluster.addr, token=cluster.token(), connect_timeout=2) as client,
    ):
        client.workers()


GRPCIO_CLIENT = textwrap.dedent(
    """
    import json
    import sys

    sys.path.insert(0, sys.argv[1])

    import grpc
    from burst.v1 import control_pb2_grpc, job_pb2

    stubs, addr, ca, token = sys.argv[1:5]
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read()),
        grpc.access_token_call_credentials(token),
    )
    with grpc.secure_channel(addr, credentials) as channel:
        stub = control_pb2_grpc.ControllerRpcStub(channel)
        spec = job_pb2.JobSpec(process=job_pb2.ProcessSpec(command="true"))
        job_id = stub.SubmitJob(job_pb2.SubmitJobRequest(spec=spec), timeout=30).job_id
        reply = stub.GetJobStatus(job_pb2.GetJobStatusRequest(job_id=job_id), timeout=30)
    print(json.dumps([job_id, reply.job_id, reply.state]))
    """
)


def test_a_grpcio_client_of_the_prototypes_stubs_over_tls_with_a_token(
    cluster: Cluster,
    pki: Path,
    seed_stubs: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    cluster.controller(*server_flags(pki))
    script = tmp_path / "grpcio_client.py"
    script.write_text(GRPCIO_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script), str(seed_stubs), f"localhost:{cluster.port}",
         str(pki / "ca.pem"), cluster.token()],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id, again, state = json.loads(done.stdout)
    assert job_id.startswith("job-") and again == job_id
    assert state == "queued"


def test_burstd_up_with_tls_runs_its_command_against_the_cluster(pki: Path, tmp_path: Path) -> None:
    """`burstd up` hands its workers and its command what they need to connect over TLS."""
    done = subprocess.run(
        [*program("burstd"), "up", "--workers", "1", "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path / "state"), "--output-dir", str(tmp_path),
         *worker_flags(pki), "--", *program("burst"), "submit", "--wait", "process", "true"],
        capture_output=True, text=True, timeout=120, env=environment(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# -- no clear text off loopback ----------------------------------------------------------------


def test_loopback_addresses_and_names() -> None:
    assert all(map(tlsconfig.loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(tlsconfig.loopback, ["0.0.0.0", "::", "10.1.2.3", "nowhere.invalid"]))


def start(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*program("burstd"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environment(BURST_STATE_DIR=str(tmp_path / "state"), BURST_TOKEN="a-token"),
    )


def test_listening_off_loopback_without_tls_exits_2_naming_the_key(tmp_path: Path) -> None:
    port = free_port()
    for args, key in [
        (["controller", "--listen", f"0.0.0.0:{port}"], "controller.tls_cert"),
        (["worker", "--peer-listen", f"0.0.0.0:{port}"], "worker.tls_cert"),
    ]:
        done = start(*args, tmp_path=tmp_path)
        assert done.returncode == 2, done
        (line,) = done.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"burstd: error: {key}: 0.0.0.0:{port} is not a loopback")
        assert "--insecure" in line
    # the key in the file is refused alike (a tls_client_ca without a certificate too)
    config = tmp_path / "burst.toml"
    config.write_text(f'[controller]\nbind_addr = "[::]:{port}"\n')
    done = start("controller", "--config", str(config), tmp_path=tmp_path)
    assert done.returncode == 2 and "controller.tls_cert" in done.stderr, done
    done = start("controller", "--tls-client-ca", "ca.pem", tmp_path=tmp_path)
    assert done.returncode == 2 and "controller.tls_cert" in done.stderr, done


def test_insecure_serves_off_loopback_in_clear_text_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    controller = Daemon(
        "controller",
        ["controller", "--listen", f"0.0.0.0:{port}", "--insecure", "--state-dir", str(state)],
        tmp_path / "controller.log",
        tmp_path,
    )
    try:
        eventually(lambda: "controller listening" in controller.log(), "the controller to listen")
        assert "WARNING" in controller.log()
        assert f"serving 0.0.0.0:{port} without TLS (insecure)" in controller.log()
        token = (state / "admin.token").read_text().strip()
        with BlockingClient(f"127.0.0.1:{port}", token=token) as client:
            assert client.workers() == []
    finally:
        controller.kill_group()
