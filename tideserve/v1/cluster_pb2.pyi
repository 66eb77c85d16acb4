from tideserve.v1 import model_config_pb2 as _model_config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorData(_message.Message):
    __slots__ = ("name", "datatype", "shape", "raw", "shared")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw: bytes
    shared: SharedMemoryRef
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw: _Optional[bytes] = ..., shared: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

class SharedMemoryRef(_message.Message):
    __slots__ = ("segment", "offset", "size", "key")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    segment: str
    offset: int
    size: int
    key: bytes
    def __init__(self, segment: _Optional[str] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., key: _Optional[bytes] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "model_name", "model_version", "inputs", "output_names")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    model_name: str
    model_version: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorData]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, batch_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorData, _Mapping]]] = ..., output_names: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("batch_id", "outputs", "worker_id", "queue_seconds", "compute_seconds", "input_seconds", "output_seconds", "model_version")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    outputs: _containers.RepeatedCompositeFieldContainer[TensorData]
    worker_id: str
    queue_seconds: float
    compute_seconds: float
    input_seconds: float
    output_seconds: float
    model_version: str
    def __init__(self, batch_id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[TensorData, _Mapping]]] = ..., worker_id: _Optional[str] = ..., queue_seconds: _Optional[float] = ..., compute_seconds: _Optional[float] = ..., input_seconds: _Optional[float] = ..., output_seconds: _Optional[float] = ..., model_version: _Optional[str] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("config", "versions", "version_weights")
    class VersionWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    config: _model_config_pb2.ModelConfig
    versions: _containers.RepeatedScalarFieldContainer[str]
    version_weights: _containers.ScalarMap[str, int]
    def __init__(self, config: _Optional[_Union[_model_config_pb2.ModelConfig, _Mapping]] = ..., versions: _Optional[_Iterable[str]] = ..., version_weights: _Optional[_Mapping[str, int]] = ...) -> None: ...

class WorkerRegistration(_message.Message):
    __slots__ = ("worker_id", "address", "models", "device", "metrics_address", "shared_memory_domain", "execute_key", "model_statuses")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    EXECUTE_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATUSES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    device: str
    metrics_address: str
    shared_memory_domain: str
    execute_key: str
    model_statuses: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., device: _Optional[str] = ..., metrics_address: _Optional[str] = ..., shared_memory_domain: _Optional[str] = ..., execute_key: _Optional[str] = ..., model_statuses: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "version", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelUpdate(_message.Message):
    __slots__ = ("control_id", "models", "statuses", "error_code", "error")
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    control_id: int
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    statuses: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    error_code: str
    error: str
    def __init__(self, control_id: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ServiceTime(_message.Message):
    __slots__ = ("batch_size", "seconds", "model")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    seconds: float
    model: str
    def __init__(self, batch_size: _Optional[int] = ..., seconds: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("queued_batches", "inflight_batches", "service_times", "memory_bytes", "completed_batches", "failed_batches", "busy_seconds")
    QUEUED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TIMES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    FAILED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queued_batches: int
    inflight_batches: int
    service_times: _containers.RepeatedCompositeFieldContainer[ServiceTime]
    memory_bytes: int
    completed_batches: int
    failed_batches: int
    busy_seconds: float
    def __init__(self, queued_batches: _Optional[int] = ..., inflight_batches: _Optional[int] = ..., service_times: _Optional[_Iterable[_Union[ServiceTime, _Mapping]]] = ..., memory_bytes: _Optional[int] = ..., completed_batches: _Optional[int] = ..., failed_batches: _Optional[int] = ..., busy_seconds: _Optional[float] = ...) -> None: ...

class WorkerReport(_message.Message):
    __slots__ = ("registration", "load", "models")
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    registration: WorkerRegistration
    load: LoadReport
    models: ModelUpdate
    def __init__(self, registration: _Optional[_Union[WorkerRegistration, _Mapping]] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., models: _Optional[_Union[ModelUpdate, _Mapping]] = ...) -> None: ...

class BalancerCommand(_message.Message):
    __slots__ = ("action", "reason", "model_name", "control_id")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[BalancerCommand.Action]
        DRAIN: _ClassVar[BalancerCommand.Action]
        RELEASE: _ClassVar[BalancerCommand.Action]
        LOAD_MODEL: _ClassVar[BalancerCommand.Action]
        UNLOAD_MODEL: _ClassVar[BalancerCommand.Action]
    ACTION_UNSPECIFIED: BalancerCommand.Action
    DRAIN: BalancerCommand.Action
    RELEASE: BalancerCommand.Action
    LOAD_MODEL: BalancerCommand.Action
    UNLOAD_MODEL: BalancerCommand.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ID_FIELD_NUMBER: _ClassVar[int]
    action: BalancerCommand.Action
    reason: str
    model_name: str
    control_id: int
    def __init__(self, action: _Optional[_Union[BalancerCommand.Action, str]] = ..., reason: _Optional[str] = ..., model_name: _Optional[str] = ..., control_id: _Optional[int] = ...) -> None: ...

class FrontendReport(_message.Message):
    __slots__ = ("batcher_id", "arrival_rate", "queued_requests", "latency_p50_seconds", "latency_p99_seconds", "requests_total", "requests_failed")
    BATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RATE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    batcher_id: str
    arrival_rate: float
    queued_requests: int
    latency_p50_seconds: float
    latency_p99_seconds: float
    requests_total: int
    requests_failed: int
    def __init__(self, batcher_id: _Optional[str] = ..., arrival_rate: _Optional[float] = ..., queued_requests: _Optional[int] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ..., requests_total: _Optional[int] = ..., requests_failed: _Optional[int] = ...) -> None: ...

class FrontendReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerState(_message.Message):
    __slots__ = ("worker_id", "address", "device", "models", "phase", "outstanding_batches", "outstanding_rows", "expected_backlog_seconds", "heartbeat_age_seconds", "error_rate", "completed_batches", "memory_bytes", "service_times", "busy_seconds", "metrics_address", "shared_memory_domain", "model_statuses")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[WorkerState.Phase]
        READY: _ClassVar[WorkerState.Phase]
        DRAINING: _ClassVar[WorkerState.Phase]
        EJECTED: _ClassVar[WorkerState.Phase]
    PHASE_UNSPECIFIED: WorkerState.Phase
    READY: WorkerState.Phase
    DRAINING: WorkerState.Phase
    EJECTED: WorkerState.Phase
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BATCHES_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_ROWS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_BACKLOG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TIMES_FIELD_NUMBER: _ClassVar[int]
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATUSES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    device: str
    models: _containers.RepeatedScalarFieldContainer[str]
    phase: WorkerState.Phase
    outstanding_batches: int
    outstanding_rows: int
    expected_backlog_seconds: float
    heartbeat_age_seconds: float
    error_rate: float
    completed_batches: int
    memory_bytes: int
    service_times: _containers.RepeatedCompositeFieldContainer[ServiceTime]
    busy_seconds: float
    metrics_address: str
    shared_memory_domain: str
    model_statuses: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., device: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., phase: _Optional[_Union[WorkerState.Phase, str]] = ..., outstanding_batches: _Optional[int] = ..., outstanding_rows: _Optional[int] = ..., expected_backlog_seconds: _Optional[float] = ..., heartbeat_age_seconds: _Optional[float] = ..., error_rate: _Optional[float] = ..., completed_batches: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., service_times: _Optional[_Iterable[_Union[ServiceTime, _Mapping]]] = ..., busy_seconds: _Optional[float] = ..., metrics_address: _Optional[str] = ..., shared_memory_domain: _Optional[str] = ..., model_statuses: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ClusterSnapshot(_message.Message):
    __slots__ = ("timestamp_unix", "workers", "models", "routing_policy", "dispatched_batches", "dispatched_rows", "failed_batches", "retried_batches", "frontends", "batch_size_counts")
    class BatchSizeCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_POLICY_FIELD_NUMBER: _ClassVar[int]
    DISPATCHED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DISPATCHED_ROWS_FIELD_NUMBER: _ClassVar[int]
    FAILED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    RETRIED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix: float
    workers: _containers.RepeatedCompositeFieldContainer[WorkerState]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    routing_policy: str
    dispatched_batches: int
    dispatched_rows: int
    failed_batches: int
    retried_batches: int
    frontends: _containers.RepeatedCompositeFieldContainer[FrontendReport]
    batch_size_counts: _containers.ScalarMap[int, int]
    def __init__(self, timestamp_unix: _Optional[float] = ..., workers: _Optional[_Iterable[_Union[WorkerState, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ..., routing_policy: _Optional[str] = ..., dispatched_batches: _Optional[int] = ..., dispatched_rows: _Optional[int] = ..., failed_batches: _Optional[int] = ..., retried_batches: _Optional[int] = ..., frontends: _Optional[_Iterable[_Union[FrontendReport, _Mapping]]] = ..., batch_size_counts: _Optional[_Mapping[int, int]] = ...) -> None: ...

class WatchClusterRequest(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "wait")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait: bool
    def __init__(self, worker_id: _Optional[str] = ..., wait: _Optional[bool] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("drained", "outstanding_batches")
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BATCHES_FIELD_NUMBER: _ClassVar[int]
    drained: bool
    outstanding_batches: int
    def __init__(self, drained: _Optional[bool] = ..., outstanding_batches: _Optional[int] = ...) -> None: ...

class SetRoutingPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetRoutingPolicyResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ControlModelRequest(_message.Message):
    __slots__ = ("model_name", "action")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ControlModelRequest.Action]
        LOAD: _ClassVar[ControlModelRequest.Action]
        UNLOAD: _ClassVar[ControlModelRequest.Action]
    ACTION_UNSPECIFIED: ControlModelRequest.Action
    LOAD: ControlModelRequest.Action
    UNLOAD: ControlModelRequest.Action
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    action: ControlModelRequest.Action
    def __init__(self, model_name: _Optional[str] = ..., action: _Optional[_Union[ControlModelRequest.Action, str]] = ...) -> None: ...

class SetCanaryWeightsRequest(_message.Message):
    __slots__ = ("model_name", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    weights: _containers.ScalarMap[str, int]
    def __init__(self, model_name: _Optional[str] = ..., weights: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SetCanaryWeightsResponse(_message.Message):
    __slots__ = ("weights",)
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.ScalarMap[str, int]
    def __init__(self, weights: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ControlModelResponse(_message.Message):
    __slots__ = ("workers", "statuses")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    workers: int
    statuses: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, workers: _Optional[int] = ..., statuses: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ScalingDecision(_message.Message):
    __slots__ = ("timestamp_unix", "policy", "current_replicas", "proposed_replicas", "applied_replicas", "reason", "inputs")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix: float
    policy: str
    current_replicas: int
    proposed_replicas: int
    applied_replicas: int
    reason: str
    inputs: _containers.ScalarMap[str, float]
    def __init__(self, timestamp_unix: _Optional[float] = ..., policy: _Optional[str] = ..., current_replicas: _Optional[int] = ..., proposed_replicas: _Optional[int] = ..., applied_replicas: _Optional[int] = ..., reason: _Optional[str] = ..., inputs: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScalerStatus(_message.Message):
    __slots__ = ("desired_replicas", "ready_replicas", "starting_replicas", "draining_replicas", "min_replicas", "max_replicas", "policy", "policy_parameters", "paused", "pinned_replicas", "recent_decisions", "runtime", "fallback_reason")
    class PolicyParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STARTING_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PINNED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RECENT_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    desired_replicas: int
    ready_replicas: int
    starting_replicas: int
    draining_replicas: int
    min_replicas: int
    max_replicas: int
    policy: str
    policy_parameters: _containers.ScalarMap[str, float]
    paused: bool
    pinned_replicas: int
    recent_decisions: _containers.RepeatedCompositeFieldContainer[ScalingDecision]
    runtime: str
    fallback_reason: str
    def __init__(self, desired_replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., starting_replicas: _Optional[int] = ..., draining_replicas: _Optional[int] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., policy: _Optional[str] = ..., policy_parameters: _Optional[_Mapping[str, float]] = ..., paused: _Optional[bool] = ..., pinned_replicas: _Optional[int] = ..., recent_decisions: _Optional[_Iterable[_Union[ScalingDecision, _Mapping]]] = ..., runtime: _Optional[str] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class ManagedWorker(_message.Message):
    __slots__ = ("worker_id", "runtime_id", "address", "state", "started_unix")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    runtime_id: str
    address: str
    state: str
    started_unix: float
    def __init__(self, worker_id: _Optional[str] = ..., runtime_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., started_unix: _Optional[float] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[ManagedWorker]
    def __init__(self, workers: _Optional[_Iterable[_Union[ManagedWorker, _Mapping]]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("name", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScaleToRequest(_message.Message):
    __slots__ = ("replicas", "release")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    release: bool
    def __init__(self, replicas: _Optional[int] = ..., release: _Optional[bool] = ...) -> None: ...

class SetBoundsRequest(_message.Message):
    __slots__ = ("min_replicas", "max_replicas")
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    min_replicas: int
    max_replicas: int
    def __init__(self, min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
