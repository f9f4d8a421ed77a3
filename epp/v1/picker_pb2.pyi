from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PickRequest(_message.Message):
    __slots__ = ("body", "headers", "model", "include_scores", "subset")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SCORES_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    headers: _containers.ScalarMap[str, str]
    model: str
    include_scores: bool
    subset: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, body: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., include_scores: _Optional[bool] = ..., subset: _Optional[_Iterable[str]] = ...) -> None: ...

class PickResponse(_message.Message):
    __slots__ = ("endpoint", "fallback_endpoints", "model", "request_id", "body", "response_headers", "scores")
    class ResponseHeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    fallback_endpoints: _containers.RepeatedScalarFieldContainer[str]
    model: str
    request_id: str
    body: bytes
    response_headers: _containers.ScalarMap[str, str]
    scores: _containers.RepeatedCompositeFieldContainer[EndpointScore]
    def __init__(self, endpoint: _Optional[str] = ..., fallback_endpoints: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., body: _Optional[bytes] = ..., response_headers: _Optional[_Mapping[str, str]] = ..., scores: _Optional[_Iterable[_Union[EndpointScore, _Mapping]]] = ...) -> None: ...

class EndpointScore(_message.Message):
    __slots__ = ("endpoint", "total", "scorers")
    class ScorersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    total: float
    scorers: _containers.ScalarMap[str, float]
    def __init__(self, endpoint: _Optional[str] = ..., total: _Optional[float] = ..., scorers: _Optional[_Mapping[str, float]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("request_id", "status", "completed", "streamed", "prompt_tokens", "completion_tokens", "cached_tokens", "time_to_first_token_s", "duration_s", "response_bytes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    STREAMED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: int
    completed: bool
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    time_to_first_token_s: float
    duration_s: float
    response_bytes: int
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[int] = ..., completed: _Optional[bool] = ..., streamed: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., time_to_first_token_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
