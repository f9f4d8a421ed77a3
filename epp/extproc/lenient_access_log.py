"""Envoy's access log messages, read without the UTF-8 checks that would lose them.

Envoy copies a request's path, authority and user agent into ``string`` fields of each
access log entry as the client sent them, and its C++ protobuf does not check them; a
usage tail cut by the response meter mid-character lands in a ``string`` too. Python's
protobuf refuses a whole message with one such field ("String field had bad UTF-8"),
so one client sending a non-UTF-8 path would cost the readings of every request in its
batch. This schema declares only the fields epp reads, with ``bytes`` where Envoy's has
``string`` (the same wire format); every other field is skipped unread.

Field numbers are taken from Envoy's own descriptors, so they cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, timestamp_pb2
from google.protobuf.message_factory import GetMessageClass

__all__ = ["LenientAccessLogs"]

_PACKAGE = "epp.lenient_access_log"
_F = descriptor_pb2.FieldDescriptorProto


def _number(message: Any, field: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[field].number
    return number


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> Any:
    field = _F(
        name=name,
        number=number,
        type=kind,
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
    )
    if type_name:
        field.type_name = type_name
    return field


def _message(name: str, *fields: Any) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _schema() -> descriptor_pb2.FileDescriptorProto:
    entry, common = accesslog_pb2.HTTPAccessLogEntry, accesslog_pb2.AccessLogCommon
    own = f".{_PACKAGE}."
    address, socket_address = address_pb2.Address, address_pb2.SocketAddress
    msg, byt, dbl = _F.TYPE_MESSAGE, _F.TYPE_BYTES, _F.TYPE_DOUBLE
    u32, u64 = _F.TYPE_UINT32, _F.TYPE_UINT64
    return descriptor_pb2.FileDescriptorProto(
        name="epp/lenient_access_log.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[
            accesslog_pb2.DESCRIPTOR.name,
            timestamp_pb2.DESCRIPTOR.name,
            duration_pb2.DESCRIPTOR.name,
        ],
        message_type=[
            _message(
                "Message",
                _field(
                    "http_logs",
                    _number(als_pb2.StreamAccessLogsMessage, "http_logs"),
                    msg,
                    own + "Logs",
                ),
            ),
            _message("Logs", _field("log_entry", 1, msg, own + "Entry", repeated=True)),
            _message(
                "Entry",
                _field(
                    "common_properties",
                    _number(entry, "common_properties"),
                    msg,
                    own + "Common",
                ),
                _field("request", _number(entry, "request"), msg, own + "Request"),
                _field("response", _number(entry, "response"), msg, own + "Response"),
            ),
            _message(
                "Common",
                _field(
                    "start_time",
                    _number(common, "start_time"),
                    msg,
                    ".google.protobuf.Timestamp",
                ),
                _field(
                    "time_to_last_downstream_tx_byte",
                    _number(common, "time_to_last_downstream_tx_byte"),
                    msg,
                    ".google.protobuf.Duration",
                ),
                _field(
                    "response_flags",
                    _number(common, "response_flags"),
                    msg,
                    ".envoy.data.accesslog.v3.ResponseFlags",
                ),
                _field("metadata", _number(common, "metadata"), msg, own + "Metadata"),
                _field(
                    "upstream_remote_address",
                    _number(common, "upstream_remote_address"),
                    msg,
                    own + "Address",
                ),
                # A map<string, string>: repeated key (1) / value (2) entries.
                _field(
                    "custom_tags",
                    _number(common, "custom_tags"),
                    msg,
                    own + "Tag",
                    repeated=True,
                ),
            ),
            _message("Tag", _field("key", 1, byt), _field("value", 2, byt)),
            _message(
                "Address",
                _field(
                    "socket_address",
                    _number(address, "socket_address"),
                    msg,
                    own + "SocketAddress",
                ),
            ),
            _message(
                "SocketAddress",
                _field("address", _number(socket_address, "address"), byt),
                _field("port_value", _number(socket_address, "port_value"), u32),
            ),
            _message("UInt32", _field("value", 1, u32)),
            # Metadata.filter_metadata and Struct.fields are maps: on the wire, repeated
            # key (1) / value (2) entries, which a map of bytes keys cannot declare.
            _message(
                "Metadata", _field("filter_metadata", 1, msg, own + "Namespace", repeated=True)
            ),
            _message("Namespace", _field("key", 1, byt), _field("value", 2, msg, own + "Struct")),
            _message("Struct", _field("fields", 1, msg, own + "Field", repeated=True)),
            _message("Field", _field("key", 1, byt), _field("value", 2, msg, own + "Value")),
            _message("Value", _field("number_value", 2, dbl), _field("string_value", 3, byt)),
            _message(
                "Request",
                _field(
                    "request_id", _number(accesslog_pb2.HTTPRequestProperties, "request_id"), byt
                ),
            ),
            _message(
                "Response",
                _field(
                    "response_code",
                    _number(accesslog_pb2.HTTPResponseProperties, "response_code"),
                    msg,
                    own + "UInt32",
                ),
                _field(
                    "response_body_bytes",
                    _number(accesslog_pb2.HTTPResponseProperties, "response_body_bytes"),
                    u64,
                ),
            ),
        ],
    )


descriptor_pool.Default().Add(_schema())
# A StreamAccessLogsMessage, read leniently: .http_logs.log_entry[i].common_properties, …
LenientAccessLogs: Any = GetMessageClass(
    descriptor_pool.Default().FindMessageTypeByName(f"{_PACKAGE}.Message")
)
