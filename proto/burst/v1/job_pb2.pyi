from proto.burst.v1 import worker_pb2 as _worker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_OUTCOME_UNSPECIFIED: _ClassVar[ReportOutcome]
    REPORT_OUTCOME_ACCEPTED: _ClassVar[ReportOutcome]
    REPORT_OUTCOME_DUPLICATE: _ClassVar[ReportOutcome]
    REPORT_OUTCOME_STALE: _ClassVar[ReportOutcome]
    REPORT_OUTCOME_UNKNOWN_JOB: _ClassVar[ReportOutcome]
REPORT_OUTCOME_UNSPECIFIED: ReportOutcome
REPORT_OUTCOME_ACCEPTED: ReportOutcome
REPORT_OUTCOME_DUPLICATE: ReportOutcome
REPORT_OUTCOME_STALE: ReportOutcome
REPORT_OUTCOME_UNKNOWN_JOB: ReportOutcome

class ProcessSpec(_message.Message):
    __slots__ = ("command", "args")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class PythonSpec(_message.Message):
    __slots__ = ("entry_point", "args")
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    entry_point: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entry_point: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class DockerSpec(_message.Message):
    __slots__ = ("image", "command", "args")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("output_dir", "process", "python", "docker", "env", "cwd", "timeout_seconds", "retries", "array_index", "entry", "name", "stdout_pattern", "stderr_pattern", "submission", "output_mode", "resources", "retry_on_exit", "crash_limit", "after", "after_any", "priority", "retry_delay_seconds", "max_fails")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    DOCKER_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    ARRAY_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATTERN_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATTERN_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_EXIT_FIELD_NUMBER: _ClassVar[int]
    CRASH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_ANY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILS_FIELD_NUMBER: _ClassVar[int]
    output_dir: str
    process: ProcessSpec
    python: PythonSpec
    docker: DockerSpec
    env: _containers.ScalarMap[str, str]
    cwd: str
    timeout_seconds: float
    retries: int
    array_index: int
    entry: str
    name: str
    stdout_pattern: str
    stderr_pattern: str
    submission: str
    output_mode: str
    resources: _worker_pb2.Resources
    retry_on_exit: _containers.RepeatedScalarFieldContainer[int]
    crash_limit: int
    after: _containers.RepeatedScalarFieldContainer[str]
    after_any: bool
    priority: int
    retry_delay_seconds: float
    max_fails: int
    def __init__(self, output_dir: _Optional[str] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., python: _Optional[_Union[PythonSpec, _Mapping]] = ..., docker: _Optional[_Union[DockerSpec, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., retries: _Optional[int] = ..., array_index: _Optional[int] = ..., entry: _Optional[str] = ..., name: _Optional[str] = ..., stdout_pattern: _Optional[str] = ..., stderr_pattern: _Optional[str] = ..., submission: _Optional[str] = ..., output_mode: _Optional[str] = ..., resources: _Optional[_Union[_worker_pb2.Resources, _Mapping]] = ..., retry_on_exit: _Optional[_Iterable[int]] = ..., crash_limit: _Optional[int] = ..., after: _Optional[_Iterable[str]] = ..., after_any: _Optional[bool] = ..., priority: _Optional[int] = ..., retry_delay_seconds: _Optional[float] = ..., max_fails: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job_id", "submission_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    submission_id: str
    def __init__(self, job_id: _Optional[str] = ..., submission_id: _Optional[str] = ...) -> None: ...

class SubmitJobsRequest(_message.Message):
    __slots__ = ("specs", "template", "array_start", "array_count", "entries", "submission_id", "more", "offset", "array_step", "array_indices")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ARRAY_START_FIELD_NUMBER: _ClassVar[int]
    ARRAY_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ARRAY_STEP_FIELD_NUMBER: _ClassVar[int]
    ARRAY_INDICES_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[JobSpec]
    template: JobSpec
    array_start: int
    array_count: int
    entries: _containers.RepeatedScalarFieldContainer[str]
    submission_id: str
    more: bool
    offset: int
    array_step: int
    array_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, specs: _Optional[_Iterable[_Union[JobSpec, _Mapping]]] = ..., template: _Optional[_Union[JobSpec, _Mapping]] = ..., array_start: _Optional[int] = ..., array_count: _Optional[int] = ..., entries: _Optional[_Iterable[str]] = ..., submission_id: _Optional[str] = ..., more: _Optional[bool] = ..., offset: _Optional[int] = ..., array_step: _Optional[int] = ..., array_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class SubmitJobsResponse(_message.Message):
    __slots__ = ("job_ids", "submission_id")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    submission_id: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., submission_id: _Optional[str] = ...) -> None: ...

class GetJobStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "state", "exit_code", "signal", "attempt", "worker_id", "submitted_at", "started_at", "finished_at", "error_message", "stdout_path", "stderr_path", "reason", "stolen", "name", "lost_count", "retried", "attempts", "owner", "resources", "waiting", "submission_id", "command", "cwd", "env_names", "kind", "priority", "after", "after_any")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STOLEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOST_COUNT_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    ENV_NAMES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_ANY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    exit_code: int
    signal: int
    attempt: int
    worker_id: str
    submitted_at: float
    started_at: float
    finished_at: float
    error_message: str
    stdout_path: str
    stderr_path: str
    reason: str
    stolen: bool
    name: str
    lost_count: int
    retried: int
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptOutput]
    owner: str
    resources: _worker_pb2.Resources
    waiting: str
    submission_id: str
    command: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    env_names: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    priority: int
    after: _containers.RepeatedScalarFieldContainer[str]
    after_any: bool
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., submitted_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error_message: _Optional[str] = ..., stdout_path: _Optional[str] = ..., stderr_path: _Optional[str] = ..., reason: _Optional[str] = ..., stolen: _Optional[bool] = ..., name: _Optional[str] = ..., lost_count: _Optional[int] = ..., retried: _Optional[int] = ..., attempts: _Optional[_Iterable[_Union[AttemptOutput, _Mapping]]] = ..., owner: _Optional[str] = ..., resources: _Optional[_Union[_worker_pb2.Resources, _Mapping]] = ..., waiting: _Optional[str] = ..., submission_id: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., env_names: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ..., priority: _Optional[int] = ..., after: _Optional[_Iterable[str]] = ..., after_any: _Optional[bool] = ...) -> None: ...

class AttemptOutput(_message.Message):
    __slots__ = ("attempt", "worker_id", "stdout_path", "stderr_path", "started_at", "finished_at", "exit_code", "signal", "reason", "usage")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    worker_id: str
    stdout_path: str
    stderr_path: str
    started_at: float
    finished_at: float
    exit_code: int
    signal: int
    reason: str
    usage: Usage
    def __init__(self, attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., stdout_path: _Optional[str] = ..., stderr_path: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("user_cpu_seconds", "system_cpu_seconds", "max_rss_kib")
    USER_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RSS_KIB_FIELD_NUMBER: _ClassVar[int]
    user_cpu_seconds: float
    system_cpu_seconds: float
    max_rss_kib: int
    def __init__(self, user_cpu_seconds: _Optional[float] = ..., system_cpu_seconds: _Optional[float] = ..., max_rss_kib: _Optional[int] = ...) -> None: ...

class GetJobStatusResponse(_message.Message):
    __slots__ = ("job_id", "state", "info")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    info: JobInfo
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., info: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class PollJobRequest(_message.Message):
    __slots__ = ("worker_id", "max_jobs", "wait_ms", "batch", "instance")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    max_jobs: int
    wait_ms: int
    batch: bool
    instance: int
    def __init__(self, worker_id: _Optional[str] = ..., max_jobs: _Optional[int] = ..., wait_ms: _Optional[int] = ..., batch: _Optional[bool] = ..., instance: _Optional[int] = ...) -> None: ...

class AssignedJob(_message.Message):
    __slots__ = ("job_id", "spec", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class PollJobResponse(_message.Message):
    __slots__ = ("job", "empty", "jobs", "lease_seq", "cancel", "drop")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    job: AssignedJob
    empty: _worker_pb2.Empty
    jobs: _containers.RepeatedCompositeFieldContainer[AssignedJob]
    lease_seq: int
    cancel: _containers.RepeatedCompositeFieldContainer[_worker_pb2.HeldJob]
    drop: _containers.RepeatedCompositeFieldContainer[_worker_pb2.HeldJob]
    def __init__(self, job: _Optional[_Union[AssignedJob, _Mapping]] = ..., empty: _Optional[_Union[_worker_pb2.Empty, _Mapping]] = ..., jobs: _Optional[_Iterable[_Union[AssignedJob, _Mapping]]] = ..., lease_seq: _Optional[int] = ..., cancel: _Optional[_Iterable[_Union[_worker_pb2.HeldJob, _Mapping]]] = ..., drop: _Optional[_Iterable[_Union[_worker_pb2.HeldJob, _Mapping]]] = ...) -> None: ...

class ReportJobResultRequest(_message.Message):
    __slots__ = ("worker_id", "job_id", "exit_code", "error_message", "attempt", "signal", "reason", "started_at", "finished_at", "stdout_path", "stderr_path", "usage")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    job_id: str
    exit_code: int
    error_message: str
    attempt: int
    signal: int
    reason: str
    started_at: float
    finished_at: float
    stdout_path: str
    stderr_path: str
    usage: Usage
    def __init__(self, worker_id: _Optional[str] = ..., job_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., error_message: _Optional[str] = ..., attempt: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., stdout_path: _Optional[str] = ..., stderr_path: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ReportJobResultResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class ReportJobResultsRequest(_message.Message):
    __slots__ = ("worker_id", "results", "started", "max_jobs", "instance")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    results: _containers.RepeatedCompositeFieldContainer[ReportJobResultRequest]
    started: _containers.RepeatedCompositeFieldContainer[_worker_pb2.HeldJob]
    max_jobs: int
    instance: int
    def __init__(self, worker_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ReportJobResultRequest, _Mapping]]] = ..., started: _Optional[_Iterable[_Union[_worker_pb2.HeldJob, _Mapping]]] = ..., max_jobs: _Optional[int] = ..., instance: _Optional[int] = ...) -> None: ...

class ReportJobResultsResponse(_message.Message):
    __slots__ = ("outcomes", "jobs", "lease_seq")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SEQ_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedScalarFieldContainer[ReportOutcome]
    jobs: _containers.RepeatedCompositeFieldContainer[AssignedJob]
    lease_seq: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ReportOutcome, str]]] = ..., jobs: _Optional[_Iterable[_Union[AssignedJob, _Mapping]]] = ..., lease_seq: _Optional[int] = ...) -> None: ...

class CancelJobsRequest(_message.Message):
    __slots__ = ("job_ids", "submission_id", "all", "state")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    submission_id: str
    all: bool
    state: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., submission_id: _Optional[str] = ..., all: _Optional[bool] = ..., state: _Optional[str] = ...) -> None: ...

class CancelJobsResponse(_message.Message):
    __slots__ = ("states", "cancelled")
    STATES_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[str]
    cancelled: int
    def __init__(self, states: _Optional[_Iterable[str]] = ..., cancelled: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "after", "limit", "all_users", "submission_id", "name", "brief", "columns")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BRIEF_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    state: str
    after: str
    limit: int
    all_users: bool
    submission_id: str
    name: str
    brief: bool
    columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[str] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ..., all_users: _Optional[bool] = ..., submission_id: _Optional[str] = ..., name: _Optional[str] = ..., brief: _Optional[bool] = ..., columns: _Optional[_Iterable[str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_after", "store_error", "columns")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    STORE_ERROR_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    next_after: str
    store_error: str
    columns: JobColumns
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., next_after: _Optional[str] = ..., store_error: _Optional[str] = ..., columns: _Optional[_Union[JobColumns, _Mapping]] = ...) -> None: ...

class JobColumns(_message.Message):
    __slots__ = ("job_id", "state", "exit_code", "signal", "attempt", "worker_id", "submitted_at", "started_at", "finished_at", "reason", "name", "owner", "submission_id", "command", "priority", "has_exit_code", "usage", "has_usage")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_USAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: _containers.RepeatedScalarFieldContainer[str]
    state: _containers.RepeatedScalarFieldContainer[str]
    exit_code: _containers.RepeatedScalarFieldContainer[int]
    signal: _containers.RepeatedScalarFieldContainer[int]
    attempt: _containers.RepeatedScalarFieldContainer[int]
    worker_id: _containers.RepeatedScalarFieldContainer[str]
    submitted_at: _containers.RepeatedScalarFieldContainer[float]
    started_at: _containers.RepeatedScalarFieldContainer[float]
    finished_at: _containers.RepeatedScalarFieldContainer[float]
    reason: _containers.RepeatedScalarFieldContainer[str]
    name: _containers.RepeatedScalarFieldContainer[str]
    owner: _containers.RepeatedScalarFieldContainer[str]
    submission_id: _containers.RepeatedScalarFieldContainer[str]
    command: _containers.RepeatedCompositeFieldContainer[Argv]
    priority: _containers.RepeatedScalarFieldContainer[int]
    has_exit_code: _containers.RepeatedScalarFieldContainer[bool]
    usage: _containers.RepeatedCompositeFieldContainer[Usage]
    has_usage: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, job_id: _Optional[_Iterable[str]] = ..., state: _Optional[_Iterable[str]] = ..., exit_code: _Optional[_Iterable[int]] = ..., signal: _Optional[_Iterable[int]] = ..., attempt: _Optional[_Iterable[int]] = ..., worker_id: _Optional[_Iterable[str]] = ..., submitted_at: _Optional[_Iterable[float]] = ..., started_at: _Optional[_Iterable[float]] = ..., finished_at: _Optional[_Iterable[float]] = ..., reason: _Optional[_Iterable[str]] = ..., name: _Optional[_Iterable[str]] = ..., owner: _Optional[_Iterable[str]] = ..., submission_id: _Optional[_Iterable[str]] = ..., command: _Optional[_Iterable[_Union[Argv, _Mapping]]] = ..., priority: _Optional[_Iterable[int]] = ..., has_exit_code: _Optional[_Iterable[bool]] = ..., usage: _Optional[_Iterable[_Union[Usage, _Mapping]]] = ..., has_usage: _Optional[_Iterable[bool]] = ...) -> None: ...

class Argv(_message.Message):
    __slots__ = ("args",)
    ARGS_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, args: _Optional[_Iterable[str]] = ...) -> None: ...

class WaitJobsRequest(_message.Message):
    __slots__ = ("job_ids", "all", "all_users", "submission_id")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    all_users: bool
    submission_id: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., all_users: _Optional[bool] = ..., submission_id: _Optional[str] = ...) -> None: ...

class WaitJobsUpdate(_message.Message):
    __slots__ = ("total", "pending", "succeeded", "failed", "cancelled", "finished", "sent_at", "first_submitted_at")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    total: int
    pending: int
    succeeded: int
    failed: int
    cancelled: int
    finished: _containers.RepeatedCompositeFieldContainer[JobInfo]
    sent_at: float
    first_submitted_at: float
    def __init__(self, total: _Optional[int] = ..., pending: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., finished: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., sent_at: _Optional[float] = ..., first_submitted_at: _Optional[float] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "hostname", "slots", "queue_capacity", "leased", "running", "peer_addr", "last_seen_ago", "state", "jobs_ended")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AGO_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_ENDED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    hostname: str
    slots: int
    queue_capacity: int
    leased: int
    running: int
    peer_addr: str
    last_seen_ago: float
    state: str
    jobs_ended: int
    def __init__(self, worker_id: _Optional[str] = ..., hostname: _Optional[str] = ..., slots: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., leased: _Optional[int] = ..., running: _Optional[int] = ..., peer_addr: _Optional[str] = ..., last_seen_ago: _Optional[float] = ..., state: _Optional[str] = ..., jobs_ended: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "undrain")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    undrain: bool
    def __init__(self, worker_id: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerInfo
    def __init__(self, worker: _Optional[_Union[WorkerInfo, _Mapping]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class ClusterEvent(_message.Message):
    __slots__ = ("seq", "time", "kind", "job_id", "worker_id", "attempt", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    kind: str
    job_id: str
    worker_id: str
    attempt: int
    detail: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., kind: _Optional[str] = ..., job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., attempt: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after", "job_id", "worker_id", "limit", "wait_ms")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    after: int
    job_id: str
    worker_id: str
    limit: int
    wait_ms: int
    def __init__(self, after: _Optional[int] = ..., job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., limit: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_after")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ClusterEvent]
    next_after: int
    def __init__(self, events: _Optional[_Iterable[_Union[ClusterEvent, _Mapping]]] = ..., next_after: _Optional[int] = ...) -> None: ...

class GetOverviewRequest(_message.Message):
    __slots__ = ("failures",)
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    failures: int
    def __init__(self, failures: _Optional[int] = ...) -> None: ...

class GetOverviewResponse(_message.Message):
    __slots__ = ("jobs", "workers", "jobs_ended", "failures", "now")
    class JobsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOBS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    JOBS_ENDED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.ScalarMap[str, int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    jobs_ended: int
    failures: _containers.RepeatedCompositeFieldContainer[JobInfo]
    now: float
    def __init__(self, jobs: _Optional[_Mapping[str, int]] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., jobs_ended: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., now: _Optional[float] = ...) -> None: ...

class ForgetJobsRequest(_message.Message):
    __slots__ = ("job_ids", "all_finished", "older_than_seconds", "all_users")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FINISHED_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    all_finished: bool
    older_than_seconds: float
    all_users: bool
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., all_finished: _Optional[bool] = ..., older_than_seconds: _Optional[float] = ..., all_users: _Optional[bool] = ...) -> None: ...

class ForgetJobsResponse(_message.Message):
    __slots__ = ("forgotten",)
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    forgotten: int
    def __init__(self, forgotten: _Optional[int] = ...) -> None: ...

class GetSubmissionRequest(_message.Message):
    __slots__ = ("submission_id",)
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    def __init__(self, submission_id: _Optional[str] = ...) -> None: ...

class SubmissionInfo(_message.Message):
    __slots__ = ("submission_id", "owner", "submitted_at", "total", "queued", "leased", "running", "succeeded", "failed", "cancelled", "waiting", "max_fails")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILS_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    owner: str
    submitted_at: float
    total: int
    queued: int
    leased: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    waiting: int
    max_fails: int
    def __init__(self, submission_id: _Optional[str] = ..., owner: _Optional[str] = ..., submitted_at: _Optional[float] = ..., total: _Optional[int] = ..., queued: _Optional[int] = ..., leased: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., waiting: _Optional[int] = ..., max_fails: _Optional[int] = ...) -> None: ...

class ResubmitJobsRequest(_message.Message):
    __slots__ = ("submission_id", "failed")
    SUBMISSION_ID_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    submission_id: str
    failed: bool
    def __init__(self, submission_id: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...
