"""Stream output mode's files: one set per job running at once, each job's part indexed."""

from __future__ import annotations

import os
from pathlib import Path

from burstd.worker.streamlog import StreamLogs


def test_parts_share_a_set_one_job_at_a_time_and_are_found_by_the_index(tmp_path: Path) -> None:
    streams = StreamLogs("w/1")  # not a plain name: made one
    folder = str(tmp_path / "sub")
    with streams.part("job-1", 1, folder) as (out1, err1, part1):
        # A second job running at the same time gets a set of its own.
        with streams.part("job-2", 1, folder) as (out2, err2, part2):
            assert streams.running("job-2", 1) == part2
            os.write(out2, b"two\n")
            for fd in (out2, err2):
                os.close(fd)
        os.write(out1, b"one\n")
        os.write(err1, b"e1\n")
        for fd in (out1, err1):
            os.close(fd)
        assert streams.running("job-1", 1) == part1
        assert streams.find("job-1", 1, folder) is None  # indexed only once it ended
    with streams.part("job-3", 2, folder) as (out3, err3, part3):
        os.write(out3, b"three\n")
        for fd in (out3, err3):
            os.close(fd)
    assert part3.stdout == part1.stdout  # the set freed last was taken again
    assert sorted(os.listdir(folder)) == [
        f"w_1.{n}.{kind}" for n in (0, 1) for kind in ("index", "stderr", "stdout")
    ]
    for job_id, attempt, out, err in [
        ("job-1", 1, b"one\n", b"e1\n"),
        ("job-2", 1, b"two\n", b""),
        ("job-3", 2, b"three\n", b""),
    ]:
        part = streams.find(job_id, attempt, folder)
        assert part is not None and streams.running(job_id, attempt) is None
        for stderr, expected in ((False, out), (True, err)):
            path, start, end = part.of(stderr)
            assert end is not None
            assert Path(path).read_bytes()[start:end] == expected
    assert streams.find("job-3", 1, folder) is None
