from proto.burst.v1 import job_pb2 as _job_pb2
from proto.burst.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StealJobsRequest(_message.Message):
    __slots__ = ("thief_worker_id", "max_jobs", "thief_instance", "steal_round", "thief_free", "thief_cpus")
    THIEF_WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    THIEF_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    STEAL_ROUND_FIELD_NUMBER: _ClassVar[int]
    THIEF_FREE_FIELD_NUMBER: _ClassVar[int]
    THIEF_CPUS_FIELD_NUMBER: _ClassVar[int]
    thief_worker_id: str
    max_jobs: int
    thief_instance: int
    steal_round: int
    thief_free: _worker_pb2.Resources
    thief_cpus: int
    def __init__(self, thief_worker_id: _Optional[str] = ..., max_jobs: _Optional[int] = ..., thief_instance: _Optional[int] = ..., steal_round: _Optional[int] = ..., thief_free: _Optional[_Union[_worker_pb2.Resources, _Mapping]] = ..., thief_cpus: _Optional[int] = ...) -> None: ...

class StealJobsResponse(_message.Message):
    __slots__ = ("jobs", "victim")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    VICTIM_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.AssignedJob]
    victim: _worker_pb2.PeerInfo
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.AssignedJob, _Mapping]]] = ..., victim: _Optional[_Union[_worker_pb2.PeerInfo, _Mapping]] = ...) -> None: ...

class TransferJobsRequest(_message.Message):
    __slots__ = ("victim_id", "thief_id", "jobs", "thief_instance", "steal_round", "victim_instance")
    VICTIM_ID_FIELD_NUMBER: _ClassVar[int]
    THIEF_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    THIEF_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    STEAL_ROUND_FIELD_NUMBER: _ClassVar[int]
    VICTIM_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    victim_id: str
    thief_id: str
    jobs: _containers.RepeatedCompositeFieldContainer[_worker_pb2.HeldJob]
    thief_instance: int
    steal_round: int
    victim_instance: int
    def __init__(self, victim_id: _Optional[str] = ..., thief_id: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[_worker_pb2.HeldJob, _Mapping]]] = ..., thief_instance: _Optional[int] = ..., steal_round: _Optional[int] = ..., victim_instance: _Optional[int] = ...) -> None: ...

class TransferJobsResponse(_message.Message):
    __slots__ = ("moved", "refused")
    MOVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    moved: _containers.RepeatedCompositeFieldContainer[_worker_pb2.HeldJob]
    refused: str
    def __init__(self, moved: _Optional[_Iterable[_Union[_worker_pb2.HeldJob, _Mapping]]] = ..., refused: _Optional[str] = ...) -> None: ...
