from proto.burst.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadOutputRequest(_message.Message):
    __slots__ = ("job_id", "stderr", "attempt", "tail", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stderr: bool
    attempt: int
    tail: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., stderr: _Optional[bool] = ..., attempt: _Optional[int] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class OutputRead(_message.Message):
    __slots__ = ("read_id", "job_id", "attempt", "stderr", "tail", "follow", "spec", "path")
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    read_id: int
    job_id: str
    attempt: int
    stderr: bool
    tail: int
    follow: bool
    spec: _job_pb2.JobSpec
    path: str
    def __init__(self, read_id: _Optional[int] = ..., job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., stderr: _Optional[bool] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class TakeOutputReadsRequest(_message.Message):
    __slots__ = ("worker_id", "wait_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class TakeOutputReadsResponse(_message.Message):
    __slots__ = ("reads",)
    READS_FIELD_NUMBER: _ClassVar[int]
    reads: _containers.RepeatedCompositeFieldContainer[OutputRead]
    def __init__(self, reads: _Optional[_Iterable[_Union[OutputRead, _Mapping]]] = ...) -> None: ...

class SendOutputRequest(_message.Message):
    __slots__ = ("worker_id", "read_id", "data", "eof", "error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    READ_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    read_id: int
    data: bytes
    eof: bool
    error: str
    def __init__(self, worker_id: _Optional[str] = ..., read_id: _Optional[int] = ..., data: _Optional[bytes] = ..., eof: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class SendOutputResponse(_message.Message):
    __slots__ = ("taken", "closed")
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    taken: bool
    closed: bool
    def __init__(self, taken: _Optional[bool] = ..., closed: _Optional[bool] = ...) -> None: ...
