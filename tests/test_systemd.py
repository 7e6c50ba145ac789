"""The systemd units in deploy/systemd: `systemd-analyze verify` finds nothing to say about them,
and the settings the daemons rely on (drain on SIGTERM, restart policy, config paths) are there."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
CONTROLLER = UNITS / "burstd-controller.service"
WORKER = UNITS / "burstd-worker@.service"
INSTANCE = "burstd-worker@w1.service"
BINARY = "/usr/local/bin/burstd"

# Lines of `systemd-analyze verify` about some other unit file of this machine (dependencies such
# as network-online.target are loaded too): "/lib/systemd/system/x.service:3: ..." or
# "x.service: ...". Anything else it prints counts.
_OTHER_FILE = re.compile(r"^/(?:usr/)?(?:lib|etc|run)/systemd/")
_UNIT_PREFIX = re.compile(
    r"^([\w:@.\\-]+\.(?:service|socket|target|mount|automount|swap|timer|path|slice|scope|device))"
    r"(?::\d+)?: "
)


def _settings(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values in file order (systemd keys may repeat)."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def _one(settings: dict[tuple[str, str], list[str]], section: str, key: str) -> str:
    values = settings.get((section, key), [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, found {values}"
    return values[0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, f"unexpected time span {value!r}"
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def _burstd_for_verify(tmp_path: Path) -> str:
    """An executable for ExecStart: verify refuses a unit whose binary does not exist.

    The installed console script if there is one, else a stub (verify only checks that the file
    is executable; these tests are about the unit files)."""
    beside = Path(sys.executable).parent / "burstd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("burstd")
    if found:
        return found
    stub = tmp_path / "bin" / "burstd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(stub)


def _relevant(output: str, ours: set[str]) -> list[str]:
    lines = []
    for line in output.splitlines():
        if not line.strip():
            continue
        if not any(name in line for name in ours):
            if _OTHER_FILE.match(line):
                continue
            prefix = _UNIT_PREFIX.match(line)
            if prefix and prefix.group(1) not in ours:
                continue
        lines.append(line)
    return lines


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    binary = _burstd_for_verify(tmp_path)
    # systemd unquotes the first word of ExecStart and expands % specifiers in it
    quoted = '"' + binary.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
    units = tmp_path / "units"
    units.mkdir()
    for source, name in ((CONTROLLER, CONTROLLER.name), (WORKER, INSTANCE)):
        text = source.read_text()
        assert BINARY in text, f"{source.name}: ExecStart does not use {BINARY}"
        (units / name).write_text(text.replace(BINARY, quoted))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(units / CONTROLLER.name), str(units / INSTANCE)],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # works offline: no running systemd is needed
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    ours = {CONTROLLER.name, INSTANCE, str(units)}
    complaints = _relevant(done.stdout + done.stderr, ours)
    assert done.returncode == 0 and not complaints, (
        f"systemd-analyze verify exited {done.returncode}:\n" + (done.stdout + done.stderr)
    )


def test_relevant_keeps_our_lines_and_drops_other_units() -> None:
    ours = {"burstd-controller.service", INSTANCE, "/tmp/x/units"}
    output = "\n".join(
        [
            "/lib/systemd/system/plymouth-start.service:15: Unknown key 'Foo' in section [Service]",
            "snapd.service: Command /usr/lib/snapd/snapd is not executable",
            "/tmp/x/units/burstd-controller.service:9: Unknown key 'Usr' in section [Service]",
            f"{INSTANCE}: Command /nope is not executable: No such file or directory",
            "Failed to create /init.scope control group",
        ]
    )
    assert _relevant(output, ours) == output.splitlines()[2:]


def test_controller_settings() -> None:
    unit = _settings(CONTROLLER)
    assert _one(unit, "Service", "ExecStart") == (
        f"{BINARY} controller --config /etc/burst/burst.toml"
    )
    assert _one(unit, "Service", "EnvironmentFile") == "-/etc/default/burstd"
    assert _one(unit, "Service", "User") == "burst"
    assert _one(unit, "Service", "Restart") == "on-failure"
    assert _one(unit, "Service", "RestartPreventExitStatus") == "2"  # configuration errors
    assert _one(unit, "Service", "StateDirectory") == "burst"
    # the default state_dir is $XDG_STATE_HOME/burst: %S/burst is the StateDirectory
    assert "XDG_STATE_HOME=%S" in unit[("Service", "Environment")]
    for key, value in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
    ]:
        assert _one(unit, "Service", key) == value, key
    assert int(_one(unit, "Unit", "StartLimitBurst")) >= 1
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


def test_worker_settings() -> None:
    unit = _settings(WORKER)
    assert _one(unit, "Service", "ExecStart") == (
        f"{BINARY} worker --config /etc/burst/burst.toml --id %i"
    )
    assert _one(unit, "Service", "EnvironmentFile") == "-/etc/default/burstd"
    assert _one(unit, "Service", "User") == "burst"
    assert _one(unit, "Service", "Restart") == "on-failure"
    # SIGTERM to the worker only (it drains: 30 s for running jobs, then kill_grace_s = 5 s), and
    # SIGKILL for the whole cgroup only after that
    assert _one(unit, "Service", "KillMode") == "mixed"
    assert _one(unit, "Service", "KillSignal") == "SIGTERM"
    assert _seconds(_one(unit, "Service", "TimeoutStopSec")) >= 30 + 5 + 5
    # an OOM-killed job must not stop the worker and its other jobs
    assert _one(unit, "Service", "OOMPolicy") == "continue"
    # job output lands in the working directory by default
    assert _one(unit, "Service", "StateDirectory") == "burst-worker/%i"
    assert _one(unit, "Service", "WorkingDirectory") == "%S/burst-worker/%i"
    assert _one(unit, "Service", "NoNewPrivileges") == "yes"
    # settings that would break arbitrary jobs (shared /tmp with dockerd, devices, home folders)
    for key in ("PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectClock", "DevicePolicy"):
        assert (("Service", key)) not in unit or _one(unit, "Service", key) == "no", key
    assert _one(unit, "Service", "ProtectSystem") != "strict"
