from proto.burst.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StealJobsRequest(_message.Message):
    __slots__ = ("thief_worker_id", "max_jobs")
    THIEF_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    thief_worker_id: str
    max_jobs: int
    def __init__(self, thief_worker_id: _Optional[str] = ..., max_jobs: _Optional[int] = ...) -> None: ...

class StealJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.AssignedJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.AssignedJob, _Mapping]]] = ...) -> None: ...
