"""The configuration model (burstd/config.py) and the logging set-up (burstd/logs.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from burstd.config import (
    SECTIONS,
    CliConfig,
    Config,
    ConfigError,
    ControllerConfig,
    WorkerConfig,
    default_state_dir,
    default_worker_id,
    example_file,
    format_hostport,
    keys,
    load_config,
    parse_hostport,
    variables,
    with_overrides,
    worker_for,
)
from burstd.logs import setup_logging
from burstd.policies.quotas import Quota
from tests.cluster import Cluster, environment, program

REPO = Path(__file__).resolve().parent.parent
ENV = {"HOME": "/home/u"}  # a fixed environment: no BURST_* variables, no XDG_STATE_HOME


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in an empty directory, so no burst.toml of the checkout is found."""
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str) -> Path:
    path = Path(name)
    path.write_text(text)
    return path


def error(path: Path | None, env: dict[str, str] | None = None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# defaults


def test_defaults_without_a_file() -> None:
    config = load_config(None, env=ENV)
    assert config.source is None
    assert config.workers == ()
    assert config.controller == ControllerConfig(state_dir=Path("/home/u/.local/state/burst"))
    c = config.controller
    assert (c.bind_addr, c.router, c.store) == ("127.0.0.1:50051", "roundrobin", "sqlite")
    assert (c.submission_buffer_capacity, c.max_batch, c.max_spec_bytes) == (1_000_000,) * 2 + (
        65536,
    )
    assert (c.lease_ttl_ms, c.heartbeat_interval_ms, c.crash_limit) == (10_000, 1_000, 5)
    assert c.retention_s == 86_400.0
    w = config.worker
    assert w == WorkerConfig()
    assert w.worker_id == ""
    assert w.controller_addr == "127.0.0.1:50051"
    assert w.slots == (os.cpu_count() or 1)
    assert w.local_queue_capacity == 2 * w.slots and w.queue_capacity_derived
    assert w.retry_interval_ms == 500
    assert (w.peer_listen_addr, w.peer_advertise_addr) == (None, None)
    assert (w.steal_batch_size, w.steal_interval_ms, w.steal) == (0, 150, True)
    assert (w.output_dir, w.python, w.docker, w.kill_grace_s) == (
        Path("."),
        "python3",
        "docker",
        5.0,
    )
    assert config.cli == CliConfig(controller_addr="127.0.0.1:50051")


def test_state_dir_default_follows_xdg() -> None:
    assert default_state_dir({"XDG_STATE_HOME": "/xdg", "HOME": "/h"}) == Path("/xdg/burst")
    # a relative XDG_STATE_HOME is invalid per the spec and ignored
    assert default_state_dir({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/state/burst"
    )
    env = {"XDG_STATE_HOME": "/xdg", "HOME": "/h"}
    assert load_config(None, env=env).controller.state_dir == Path("/xdg/burst")


def test_default_worker_id_is_stable() -> None:
    assert default_worker_id() == default_worker_id()
    assert default_worker_id()


def test_queue_capacity_derived_and_clamped() -> None:
    assert WorkerConfig(slots=3).local_queue_capacity == 6
    assert WorkerConfig(slots=3, local_queue_capacity=2).local_queue_capacity == 3  # raised
    explicit = WorkerConfig(slots=3, local_queue_capacity=10)
    assert explicit.local_queue_capacity == 10 and not explicit.queue_capacity_derived


# --------------------------------------------------------------------------------------------------
# files


def test_toml_file() -> None:
    path = write(
        "burst.toml",
        """
[controller]
bind_addr = "[::1]:6000"
router = "power2"
submission_buffer_capacity = 200000
state_dir = "~/state"
store = "memory"
lease_ttl_ms = 3000
heartbeat_interval_ms = 500
crash_limit = 2
max_batch = 1000
max_spec_bytes = 4096
retention_s = 60

[worker]
controller_addr = "http://ctl.example:6000"
slots = 2
output_dir = "out"
kill_grace_s = 1

[[workers]]
worker_id = "w1"
slots = 8
local_queue_capacity = 4
peer_listen_addr = "0.0.0.0:0"
peer_advertise_addr = "w1:7001"

[[workers]]
worker_id = "w2"
steal = false

[cli]
controller_addr = "ctl.example:6000"
""",
    )
    config = load_config(path, env=ENV)
    assert config.source == path
    assert config.controller == ControllerConfig(
        bind_addr="[::1]:6000",
        router="power2",
        submission_buffer_capacity=200_000,
        state_dir=Path("/home/u/state"),
        store="memory",
        lease_ttl_ms=3000,
        heartbeat_interval_ms=500,
        crash_limit=2,
        max_batch=1000,
        max_spec_bytes=4096,
        retention_s=60.0,
    )
    assert config.worker == WorkerConfig(
        controller_addr="ctl.example:6000", slots=2, output_dir=Path("out"), kill_grace_s=1.0
    )
    w1, w2 = config.workers
    # entries inherit [worker] keys they do not set
    assert w1 == dataclasses.replace(
        config.worker,
        worker_id="w1",
        slots=8,
        local_queue_capacity=8,  # 4 < slots: raised to slots
        peer_listen_addr="0.0.0.0:0",
        peer_advertise_addr="w1:7001",
    )
    assert w2.worker_id == "w2" and w2.slots == 2 and w2.local_queue_capacity == 4
    assert w2.controller_addr == "ctl.example:6000" and w2.output_dir == Path("out")
    assert w1.steal and not w2.steal
    assert config.cli.controller_addr == "ctl.example:6000"


PROTOTYPE_JSON = {
    "controller": {
        "bind_addr": "0.0.0.0:50051",
        "router": "power2",
        "submission_buffer_capacity": 200000,
    },
    "workers": [
        {
            "worker_id": f"worker-{n}",
            "controller_addr": "http://127.0.0.1:50051",
            "slots": 4,
            "poll_interval_ms": 1,  # tuned by its users; the prototype raised it to 10
            "retry_interval_ms": 25,
            "local_queue_capacity": 64,
            "peer_listen_addr": f"0.0.0.0:5105{n}",
            "peer_advertise_addr": f"127.0.0.1:5105{n}",
            "steal_batch_size": 2,
            "steal_interval_ms": 25,
        }
        for n in (1, 2)
    ],
    "cli": {"controller_addr": "http://127.0.0.1:50051"},
}


def test_prototype_json_layout() -> None:
    path = write("burst.config.json", json.dumps(PROTOTYPE_JSON, indent=2))
    config = load_config(path, env=ENV)
    assert config.controller.bind_addr == "0.0.0.0:50051"
    assert config.controller.router == "power2"
    assert config.controller.submission_buffer_capacity == 200_000
    assert config.cli.controller_addr == "127.0.0.1:50051"  # scheme dropped
    assert [w.worker_id for w in config.workers] == ["worker-1", "worker-2"]
    assert config.workers[1] == WorkerConfig(
        worker_id="worker-2",
        controller_addr="127.0.0.1:50051",
        slots=4,
        retry_interval_ms=25,
        local_queue_capacity=64,
        peer_listen_addr="0.0.0.0:51052",
        peer_advertise_addr="127.0.0.1:51052",
        steal_batch_size=2,
        steal_interval_ms=25,
    )


def test_prototype_tuned_config_loads_with_a_warning_naming_the_key() -> None:
    path = write("burst.config.json", json.dumps(PROTOTYPE_JSON))
    config = load_config(path, env=ENV)
    why = "ignored: workers wait for jobs in a long poll, with no polling interval"
    assert config.warnings_for("worker") == [
        f"burst.config.json: workers[0].poll_interval_ms (and in 1 more tables): {why}"
    ]
    assert config.warnings_for("controller") == config.warnings_for("cli") == []
    # In [worker] too, whatever its value; a file without it has no warning.
    config = load_config(write("w.toml", '[worker]\npoll_interval_ms = "often"\n'), env=ENV)
    assert config.warnings_for("worker") == [f"w.toml: worker.poll_interval_ms: {why}"]
    assert load_config(write("x.toml", "[worker]\nslots = 1\n"), env=ENV).warnings == ()


def every_key() -> list[tuple[str, str]]:
    return [(section, name) for section, (cls, _) in SECTIONS.items() for name in keys(cls)]


@pytest.mark.parametrize(("section", "name"), every_key())
def test_every_key_refuses_a_bad_value_naming_file_and_key(section: str, name: str) -> None:
    # A list is no valid value of any key; the message shows it.
    path = write("burst.config.json", json.dumps({section: {name: [1]}}))
    message = error(path)
    assert message.startswith(f"burst.config.json: {section}.{name}: ") and "[1]" in message
    if section == "worker":
        path = write("b.toml", f"[[workers]]\n{name} = [1]\n")
        message = error(path)
        assert message.startswith(f"b.toml: workers[0].{name}: ") and "[1]" in message


def test_json_same_model_as_toml() -> None:
    toml = write("a.toml", '[controller]\nrouter = "biased"\n[[workers]]\nworker_id = "x"\n')
    js = write(
        "a.json", json.dumps({"controller": {"router": "biased"}, "workers": [{"worker_id": "x"}]})
    )
    a, b = load_config(toml, env=ENV), load_config(js, env=ENV)
    assert dataclasses.replace(a, source=None) == dataclasses.replace(b, source=None)


def test_json_entries_need_no_keys_and_null_means_unset() -> None:
    path = write("c.json", '{"workers": [{}, {"peer_listen_addr": null}]}')
    assert load_config(path, env=ENV).workers == (WorkerConfig(), WorkerConfig())


def test_search_order_in_working_directory() -> None:
    write("burst.config.json", '{"controller": {"router": "power2"}}')
    assert load_config(None, env=ENV).controller.router == "power2"
    write("burst.toml", '[controller]\nrouter = "biased"\n')
    config = load_config(None, env=ENV)
    assert config.controller.router == "biased"
    assert config.source == Path("burst.toml")


def test_missing_explicit_file() -> None:
    assert error(Path("nope.toml")).startswith("nope.toml: cannot read: ")


# --------------------------------------------------------------------------------------------------
# errors


def test_unknown_keys_at_every_level() -> None:
    assert error(write("a.toml", "colour = 1\n")) == "a.toml: colour: unknown key"
    assert (
        error(write("b.toml", "[controller]\nroutr = 'power2'\n"))
        == "b.toml: controller.routr: unknown key (did you mean 'router'?)"
    )
    assert (
        error(write("c.json", '{"workers": [{"worker_id": "a"}, {"slot": 1}]}'))
        == "c.json: workers[1].slot: unknown key (did you mean 'slots'?)"
    )
    assert error(write("d.toml", "[cli]\nfoo = 1\n")) == "d.toml: cli.foo: unknown key"


def test_quotas_and_their_overrides_per_user() -> None:
    path = write(
        "q.toml",
        "[quotas]\nmax_queued = 100\nsubmit_rate = 5\n"
        "[quotas.users.alice]\nmax_running = 2\n"
        "[quotas.users.bob]\nmax_queued = 0\nsubmit_rate = 0.5\n",
    )
    quotas = load_config(path, env=ENV).controller.quotas
    assert quotas.of("carol") == Quota(max_queued=100, max_running=0, submit_rate=5.0)
    assert quotas.of("alice") == Quota(max_queued=100, max_running=2, submit_rate=5.0)
    assert quotas.of("bob") == Quota(max_queued=0, max_running=0, submit_rate=0.5)
    assert load_config(None, env=ENV).controller.quotas.of("carol") == Quota()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[quotas]\nmax_running = -1\n", "q.toml: quotas.max_running: expected an integer >= 0"),
        (
            "[quotas.users.bob]\nsubmit_rate = 'fast'\n",
            "q.toml: quotas.users.bob.submit_rate: expected a number >= 0",
        ),
        (
            "[quotas.users.bob]\nmax_runing = 1\n",
            "q.toml: quotas.users.bob.max_runing: unknown key (did you mean 'max_running'?)",
        ),
        ("[quotas]\nusers = 3\n", "q.toml: quotas.users: expected a table, got 3"),
        ("[quotas.users]\nbob = 3\n", "q.toml: quotas.users.bob: expected a table, got 3"),
    ],
)
def test_bad_quotas_name_the_key(text: str, message: str) -> None:
    assert error(write("q.toml", text)).startswith(message)


def test_old_scheduler_key_is_explained() -> None:
    path = write("burst.config.json", '{"controller": {"scheduler": "fifo"}}')
    assert (
        error(path)
        == "burst.config.json: controller.scheduler: unknown key (renamed to controller.router)"
    )


def test_bad_router_lists_valid_names() -> None:
    path = write("burst.toml", '[controller]\nrouter = "fifo"\n')
    assert error(path) == (
        "burst.toml: controller.router: unknown router 'fifo' (valid: biased, power2, roundrobin)"
    )
    # a caller-supplied registry
    assert load_config(path, env=ENV, routers={"fifo", "x"}).controller.router == "fifo"
    assert error(write("b.toml", "[controller]\nrouter = 'a'\n"), routers=["z", "b"]).endswith(
        "unknown router 'a' (valid: b, z)"
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"workers": [{}, {"slots": "four"}]},
            'workers[1].slots: expected an integer >= 1, got "four"',
        ),
        ({"workers": [{"slots": 0}]}, "workers[0].slots: expected an integer >= 1, got 0"),
        ({"worker": {"slots": True}}, "worker.slots: expected an integer >= 1, got true"),
        ({"worker": {"slots": 2.0}}, "worker.slots: expected an integer >= 1, got 2.0"),
        (
            {"worker": {"retry_interval_ms": 1}},
            "worker.retry_interval_ms: expected an integer >= 10, got 1",
        ),
        (
            {"controller": {"lease_ttl_ms": 50}},
            "controller.lease_ttl_ms: expected an integer >= 100, got 50",
        ),
        (
            {"controller": {"crash_limit": 0}},
            "controller.crash_limit: expected an integer >= 1, got 0",
        ),
        (
            {"controller": {"retention_s": -1}},
            "controller.retention_s: expected a number >= 0, got -1",
        ),
        ({"controller": {"router": 3}}, "controller.router: unknown router 3 (valid: "),
        ({"controller": {"store": "redis"}}, "controller.store: unknown store 'redis' (valid: "),
        ({"worker": {"python": ""}}, 'worker.python: expected a non-empty string, got ""'),
        ({"worker": {"steal": "no"}}, 'worker.steal: expected true or false, got "no"'),
        ({"worker": {"output_dir": 5}}, "worker.output_dir: expected a non-empty path, got 5"),
        ({"worker": {"worker_id": None}}, "worker.worker_id: expected a string, got null"),
        (
            {"controller": {"bind_addr": "localhost"}},
            "controller.bind_addr: invalid address 'localhost': expected host:port",
        ),
        (
            {"cli": {"controller_addr": "127.0.0.1:0"}},
            "cli.controller_addr: invalid address '127.0.0.1:0': port 0 is only valid for listen",
        ),
        (
            {"worker": {"controller_addr": "https://a:1"}},
            "worker.controller_addr: invalid address 'https://a:1': unsupported scheme",
        ),
        ({"controller": []}, "controller: expected a table, got []"),
        ({"workers": {"worker_id": "a"}}, "workers: expected an array of tables, got "),
        ({"workers": [1]}, "workers[0]: expected a table, got 1"),
        (
            {"workers": [{"worker_id": "a"}, {"worker_id": "a"}]},
            "workers[1].worker_id: duplicate worker id 'a' (also workers[0])",
        ),
    ],
)
def test_bad_values(doc: dict[str, object], message: str) -> None:
    path = write("burst.config.json", json.dumps(doc))
    assert error(path).startswith(f"burst.config.json: {message}")


def test_heartbeat_must_be_shorter_than_ttl() -> None:
    path = write("burst.toml", "[controller]\nlease_ttl_ms = 1000\nheartbeat_interval_ms = 1000\n")
    assert error(path) == (
        "burst.toml: controller.heartbeat_interval_ms: "
        "must be less than controller.lease_ttl_ms (1000), got 1000"
    )
    # the defaults are checked against an explicit ttl too
    path = write("b.toml", "[controller]\nlease_ttl_ms = 500\n")
    assert "must be less than controller.lease_ttl_ms (500), got 1000" in error(path)


def test_toml_syntax_error_names_line() -> None:
    path = write("burst.toml", '[controller]\nrouter = "power2"\nbind_addr = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.line == 3
    assert str(info.value).startswith("burst.toml: line 3, column ")
    assert "invalid TOML" in str(info.value)


def test_json_syntax_error_names_line() -> None:
    path = write("burst.config.json", '{\n  "controller": {\n    "router": "power2",\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.line == 4
    assert str(info.value).startswith("burst.config.json: line 4, column 3: invalid JSON: ")


def test_json_top_level_must_be_an_object() -> None:
    assert error(write("x.json", "[]")) == "x.json: expected a JSON object at the top, got []"


# --------------------------------------------------------------------------------------------------
# environment


def test_environment_overrides_file() -> None:
    path = write("burst.config.json", json.dumps(PROTOTYPE_JSON))
    env = {
        **ENV,
        "BURST_CONTROLLER": "http://ctl:7000",
        "BURST_LISTEN": "0.0.0.0:7000",
        "BURST_ROUTER": "biased",
        "BURST_STATE_DIR": "/var/lib/burst",
        "BURST_SLOTS": " 3 ",
        "BURST_WORKER_ID": "worker-2",
        "BURST_OUTPUT_DIR": "/out",
    }
    config = load_config(path, env=env)
    assert config.controller.bind_addr == "0.0.0.0:7000"
    assert config.controller.router == "biased"
    assert config.controller.state_dir == Path("/var/lib/burst")
    assert config.cli.controller_addr == "ctl:7000"
    assert config.worker.worker_id == "worker-2"
    for w in (config.worker, *config.workers):
        assert (w.controller_addr, w.slots, w.output_dir) == ("ctl:7000", 3, Path("/out"))
    assert [w.worker_id for w in config.workers] == ["worker-1", "worker-2"]  # ids untouched
    assert worker_for(config).peer_listen_addr == "0.0.0.0:51052"  # BURST_WORKER_ID selects


def test_empty_variables_count_as_unset() -> None:
    assert load_config(None, env={**ENV, "BURST_ROUTER": "", "BURST_SLOTS": " "}) == load_config(
        None, env=ENV
    )


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("BURST_SLOTS", "four", 'expected an integer >= 1, got "four"'),
        ("BURST_SLOTS", "0", "expected an integer >= 1, got 0"),
        ("BURST_ROUTER", "fifo", "unknown router 'fifo' (valid: biased, power2, roundrobin)"),
        ("BURST_LISTEN", "nowhere", "invalid address 'nowhere': expected host:port"),
        ("BURST_CONTROLLER", "h:99999", "invalid address 'h:99999': port must be a number"),
    ],
)
def test_bad_variable(var: str, value: str, message: str) -> None:
    assert error(None, env={**ENV, var: value}).startswith(f"environment: {var}: {message}")


# --------------------------------------------------------------------------------------------------
# flags and worker selection


def test_with_overrides() -> None:
    worker = WorkerConfig(slots=2)
    assert with_overrides(worker, slots=None, python=None) == worker
    more = with_overrides(worker, slots=5)
    assert more.slots == 5 and more.local_queue_capacity == 10  # derived again
    pinned = with_overrides(WorkerConfig(slots=2, local_queue_capacity=7), slots="5")
    assert (pinned.slots, pinned.local_queue_capacity) == (5, 7)
    ctl = with_overrides(ControllerConfig(), bind_addr="http://[::1]:1", router="power2")
    assert (ctl.bind_addr, ctl.router) == ("[::1]:1", "power2")
    cli = with_overrides(CliConfig(), controller_addr="h:1")
    assert cli.controller_addr == "h:1"


def test_worker_for_keeps_a_derived_capacity_derived() -> None:
    # `burstd worker --id w1 --slots 1` on a 2-CPU machine: capacity 2, not 2 x 2 CPUs.
    selected = worker_for(Config(worker=WorkerConfig(slots=2)), "w1")
    assert selected.queue_capacity_derived
    assert with_overrides(selected, slots=1).local_queue_capacity == 2
    pinned = worker_for(Config(worker=WorkerConfig(slots=2, local_queue_capacity=7)), "w1")
    assert with_overrides(pinned, slots=1).local_queue_capacity == 7


def test_with_overrides_errors() -> None:
    with pytest.raises(ConfigError) as info:
        with_overrides(WorkerConfig(), slots="many")
    assert str(info.value) == 'command line: worker.slots: expected an integer >= 1, got "many"'
    with pytest.raises(ConfigError) as info:
        with_overrides(ControllerConfig(), heartbeat_interval_ms=20_000)
    assert "controller.heartbeat_interval_ms: must be less than" in str(info.value)
    with pytest.raises(ConfigError, match="unknown router 'x'"):
        with_overrides(ControllerConfig(), router="x")
    with pytest.raises(TypeError, match="no field 'nope'"):
        with_overrides(CliConfig(), nope=1)


def test_worker_for() -> None:
    path = write(
        "burst.toml",
        "[worker]\nslots = 2\n"
        '[[workers]]\nworker_id = "a"\nslots = 6\n'
        '[[workers]]\nworker_id = "b"\n',
    )
    config = load_config(path, env=ENV)
    assert worker_for(config, "a") is config.workers[0]
    assert worker_for(config, "b").slots == 2
    other = worker_for(config, "c")
    assert other == dataclasses.replace(config.worker, worker_id="c")
    assert worker_for(config).worker_id == default_worker_id()
    named = dataclasses.replace(config, worker=dataclasses.replace(config.worker, worker_id="a"))
    assert worker_for(named).slots == 6


# --------------------------------------------------------------------------------------------------
# addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("http://127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("http://ctl.example:80/", ("ctl.example", 80)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:7000", ("::1", 7000)),
        ("http://[fe80::1]:1", ("fe80::1", 1)),
        (" worker_1:9 ", ("worker_1", 9)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected
    assert parse_hostport(format_hostport(*expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", ":80", "host:", "host:x", "host:65536", "::1:80", "[::1]", "[nope]:1", "a b:1",
     "grpc://h:1", "[::1:80"],
)  # fmt: skip
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid address"):
        parse_hostport(text)


# --------------------------------------------------------------------------------------------------
# the example file


def test_example_file_is_the_defaults() -> None:
    example = REPO / "burst.example.toml"
    config = load_config(example, env=ENV)
    assert config == Config(
        controller=ControllerConfig(state_dir=default_state_dir(ENV)), source=example
    )
    assert config.worker.queue_capacity_derived


def test_example_file_is_made_from_the_declarations() -> None:
    # After a change of a key: python -m burstd.config > burst.example.toml
    assert (REPO / "burst.example.toml").read_text() == example_file()


def test_example_file_documents_every_key_and_variable() -> None:
    text = example_file()
    for section, (cls, _) in SECTIONS.items():
        for name in keys(cls):
            assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{section}.{name}"
    assert variables()["BURST_CONTROLLER"] == ["worker.controller_addr", "cli.controller_addr"]
    for var, targets in variables().items():
        assert f"#   {var}" in text and ", ".join(targets) in text
    assert "worker.poll_interval_ms" in text  # the retired key, and why it is ignored


# --------------------------------------------------------------------------------------------------
# the programs


def test_worker_runs_on_a_prototype_tuned_config_and_names_the_ignored_key(
    cluster: Cluster,
) -> None:
    prototype = json.loads(json.dumps(PROTOTYPE_JSON))
    for entry in prototype["workers"]:  # (free ports: the machine is shared)
        del entry["peer_listen_addr"], entry["peer_advertise_addr"]
    path = cluster.tmp / "burst.config.json"
    path.write_text(json.dumps(prototype))
    cluster.controller("--config", str(path))
    worker = cluster.worker("worker-1", "--config", str(path))
    cluster.wait_workers(1)
    [job_id] = cluster.burst("submit", "process", "true").stdout.split()
    cluster.burst("wait", job_id)
    worker.stop()
    assert f"{path}: workers[0].poll_interval_ms (and in 1 more tables): ignored: " in worker.log()


@pytest.mark.parametrize(
    ("program_args", "text", "message"),
    [
        (
            ["worker", "--id", "w"],
            '[[workers]]\nworker_id = "w"\nretry_interval_ms = 1\n',
            "workers[0].retry_interval_ms: expected an integer >= 10, got 1",
        ),
        (
            ["controller"],
            '[controller]\nstore = "redis"\n',
            "controller.store: unknown store 'redis' (valid: memory, sqlite)",
        ),
    ],
)
def test_a_bad_value_stops_the_program_with_exit_2_naming_file_and_key(
    tmp_path: Path, program_args: list[str], text: str, message: str
) -> None:
    path = write("bad.toml", text)
    result = subprocess.run(
        [*program("burstd"), *program_args, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
    )
    assert result.returncode == 2
    assert f"bad.toml: {message}" in result.stderr


# --------------------------------------------------------------------------------------------------
# logging set-up


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(extra={})
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)
    logging.getLogger("purerpc").setLevel(logging.NOTSET)


@pytest.mark.usefixtures("_restore_logging")
def test_logging_format_and_interception(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BURST_LOG", raising=False)
    setup_logging("DEBUG", component="worker")
    logger.info("plain {}", "{braces}")
    logger.bind(job_id="j-1", worker_id="w-1").debug("with context")
    logging.getLogger("trio.test").warning("from stdlib %d", 7)
    logging.getLogger("purerpc.server").warning("Got exception in main dispatch loop")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert " INFO " in lines[0] and " worker plain {braces}" in lines[0]
    assert "[worker_id=w-1 job_id=j-1] with context" in lines[1]
    assert lines[2].endswith("from stdlib 7")


@pytest.mark.usefixtures("_restore_logging")
def test_logging_level_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BURST_LOG", "warning")
    setup_logging("DEBUG", component="controller")
    logger.info("hidden")
    logger.warning("shown")
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("BURST_LOG", "loud")
    with pytest.raises(ValueError, match="BURST_LOG: unknown level 'loud'"):
        setup_logging(component="controller")


@pytest.mark.usefixtures("_restore_logging")
def test_logging_json_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BURST_LOG", raising=False)
    setup_logging("INFO", component="worker", log_format="json")
    logger.bind(job_id="j-1", worker_id="w-1").info("with {}", "context")
    logger.debug("hidden")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.bind(worker_id="w-1").exception("failed")
    logging.getLogger("trio.test").warning("from stdlib %d", 7)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 3, lines
    assert lines[0]["message"] == "with context" and lines[0]["level"] == "INFO"
    assert (lines[0]["job_id"], lines[0]["worker_id"], lines[0]["component"]) == (
        "j-1",
        "w-1",
        "worker",
    )
    assert "RuntimeError: boom" in lines[1]["exception"] and "job_id" not in lines[1]
    assert lines[2]["message"] == "from stdlib 7"
