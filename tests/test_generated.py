"""The committed generated modules (`*_pb2.py`, `*_pb2.pyi`) match their .proto files.

They are regenerated into a temporary folder with the pinned grpcio-tools and compared byte for
byte; a mismatch means a .proto was edited without regenerating (see docs/development.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

REPO = Path(__file__).resolve().parent.parent
PROTOS = sorted(
    str(p.relative_to(REPO))
    for pattern in ("proto/burst/v1/*.proto", "proto/grpc/health/v1/health.proto")
    for p in REPO.glob(pattern)
)
REGENERATE = (
    "python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. "
    "proto/burst/v1/*.proto proto/grpc/health/v1/health.proto"
)


def test_committed_generated_modules_are_fresh(tmp_path: Path) -> None:
    assert "proto/burst/v1/job.proto" in PROTOS
    assert "proto/grpc/health/v1/health.proto" in PROTOS
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *PROTOS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, f"protoc failed:\n{run.stderr}"

    stale = []
    for proto in PROTOS:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = proto.removesuffix(".proto") + suffix
            fresh = (tmp_path / name).read_bytes()
            committed = REPO / name
            if not committed.exists():
                stale.append(f"{name} (missing)")
            elif committed.read_bytes() != fresh:
                stale.append(name)
    assert not stale, (
        f"generated modules out of date: {', '.join(stale)}\n"
        f"regenerate them from the repository root with:\n    {REGENERATE}"
    )


def test_no_generated_module_without_its_proto() -> None:
    orphans = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "proto").rglob("*_pb2.py*"))
        if not p.with_name(p.name.split("_pb2.")[0] + ".proto").exists()
    ]
    assert orphans == [], f"generated modules whose .proto is gone: {orphans}"
