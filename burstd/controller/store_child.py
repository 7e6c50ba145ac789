"""The store process's program: it runs ``Writes`` for the controller, one request at a time.

Started by ``burstd.controller.store_process.StoreProcess`` as ``python -m
burstd.controller.store_child PATH``, with the requests on its standard input and the replies on
its standard output, each a marshal frame (``HEADER``: its length). It imports no trio (nor
anything else it does not run): its start-up is the time until the controller's first commit can
be written, after a start and after a store process died.
"""

from __future__ import annotations

import marshal
import signal
import sqlite3
import struct
import sys
import traceback
from pathlib import Path
from typing import IO

from burstd.controller.store import Writes

HEADER = struct.Struct("<Q")


def _read_frame(stream: IO[bytes]) -> bytes:
    """One frame of the input (a blocking read: the child has nothing else to do)."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError
    (size,) = HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return data


def serve(writes: Writes, requests: IO[bytes], replies: IO[bytes]) -> None:
    """One request at a time until the parent closes its end."""
    while True:
        try:
            operation, args = marshal.loads(_read_frame(requests))
        except EOFError:
            return
        try:
            reply = (True, getattr(writes, operation)(*args))
        except sqlite3.Error as error:
            reply = (False, str(error))
        except Exception as error:  # a bug: fail this call, say where, and serve the next
            traceback.print_exc()
            reply = (False, f"{type(error).__name__}: {error}")
        data = marshal.dumps(reply)
        try:
            replies.write(HEADER.pack(len(data)) + data)
            replies.flush()
        except BrokenPipeError:  # the parent is gone: nobody waits for the reply
            return


def main() -> None:
    # A Ctrl-C or a systemctl stop reaches the whole process group: the controller's last
    # commits must still be written while it shuts down (it closes our input when done).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (path,) = sys.argv[1:]
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    # Nothing else may write into the reply stream.
    sys.stdout = sys.stderr
    writes = Writes.open(Path(path))
    try:
        serve(writes, requests, replies)
    finally:
        writes.close()


if __name__ == "__main__":
    main()
