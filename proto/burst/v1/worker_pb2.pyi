from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeldJob(_message.Message):
    __slots__ = ("job_id", "attempt", "running")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    running: bool
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., running: _Optional[bool] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpus", "mem", "gpus", "named")
    class NamedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEM_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    NAMED_FIELD_NUMBER: _ClassVar[int]
    cpus: int
    mem: int
    gpus: int
    named: _containers.ScalarMap[str, int]
    def __init__(self, cpus: _Optional[int] = ..., mem: _Optional[int] = ..., gpus: _Optional[int] = ..., named: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "slots", "queue_capacity", "peer_addr", "held", "hostname", "lease_seq", "instance", "resources")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    slots: int
    queue_capacity: int
    peer_addr: str
    held: _containers.RepeatedCompositeFieldContainer[HeldJob]
    hostname: str
    lease_seq: int
    instance: int
    resources: Resources
    def __init__(self, worker_id: _Optional[str] = ..., slots: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., peer_addr: _Optional[str] = ..., held: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ..., hostname: _Optional[str] = ..., lease_seq: _Optional[int] = ..., instance: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("accepted", "lease_ttl_ms", "heartbeat_interval_ms", "drop", "peers", "paced_heartbeat_ms", "verifiers", "verifiers_version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PACED_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    lease_ttl_ms: int
    heartbeat_interval_ms: int
    drop: _containers.RepeatedCompositeFieldContainer[HeldJob]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    paced_heartbeat_ms: int
    verifiers: _containers.RepeatedCompositeFieldContainer[PeerVerifier]
    verifiers_version: int
    def __init__(self, accepted: _Optional[bool] = ..., lease_ttl_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., drop: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., paced_heartbeat_ms: _Optional[int] = ..., verifiers: _Optional[_Iterable[_Union[PeerVerifier, _Mapping]]] = ..., verifiers_version: _Optional[int] = ...) -> None: ...

class PeerVerifier(_message.Message):
    __slots__ = ("token_sha256", "worker_ids", "expires_at")
    TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token_sha256: bytes
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    expires_at: float
    def __init__(self, token_sha256: _Optional[bytes] = ..., worker_ids: _Optional[_Iterable[str]] = ..., expires_at: _Optional[float] = ...) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("worker_id", "peer_addr", "slots", "capacity", "leased", "running")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    peer_addr: str
    slots: int
    capacity: int
    leased: int
    running: int
    def __init__(self, worker_id: _Optional[str] = ..., peer_addr: _Optional[str] = ..., slots: _Optional[int] = ..., capacity: _Optional[int] = ..., leased: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "held", "lease_seq", "steal_round_done", "want_peers", "instance", "verifiers_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    STEAL_ROUND_DONE_FIELD_NUMBER: _ClassVar[int]
    WANT_PEERS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    held: _containers.RepeatedCompositeFieldContainer[HeldJob]
    lease_seq: int
    steal_round_done: int
    want_peers: bool
    instance: int
    verifiers_version: int
    def __init__(self, worker_id: _Optional[str] = ..., held: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ..., lease_seq: _Optional[int] = ..., steal_round_done: _Optional[int] = ..., want_peers: _Optional[bool] = ..., instance: _Optional[int] = ..., verifiers_version: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("ok", "cancel", "drop", "reregister", "peers", "paced_heartbeat_ms", "verifiers", "verifiers_version")
    OK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PACED_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    cancel: _containers.RepeatedCompositeFieldContainer[HeldJob]
    drop: _containers.RepeatedCompositeFieldContainer[HeldJob]
    reregister: bool
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    paced_heartbeat_ms: int
    verifiers: _containers.RepeatedCompositeFieldContainer[PeerVerifier]
    verifiers_version: int
    def __init__(self, ok: _Optional[bool] = ..., cancel: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ..., drop: _Optional[_Iterable[_Union[HeldJob, _Mapping]]] = ..., reregister: _Optional[bool] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., paced_heartbeat_ms: _Optional[int] = ..., verifiers: _Optional[_Iterable[_Union[PeerVerifier, _Mapping]]] = ..., verifiers_version: _Optional[int] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
