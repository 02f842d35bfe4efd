"""Spotware's Open API messages and the wire framing.

The message classes come compiled from the ``ctrader-open-api`` package (Spotware's own
definitions); nothing else of that package is used. Importing its message modules runs
the package's ``__init__``, which loads its Twisted client and warns about an optional
Twisted module; the warning is irrelevant here and silenced.

On the wire every message is a ``ProtoMessage`` (payloadType, payload, clientMsgId)
preceded by its length as a 4-byte big-endian unsigned integer.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from ctrader_open_api.messages import OpenApiCommonMessages_pb2 as common
    from ctrader_open_api.messages import OpenApiCommonModelMessages_pb2 as common_model
    from ctrader_open_api.messages import OpenApiMessages_pb2 as oa
    from ctrader_open_api.messages import OpenApiModelMessages_pb2 as model

__all__ = ["FrameError", "FrameReader", "Received", "common", "common_model", "decode",
           "encode", "error_code_name", "model", "oa", "payload_name", "payload_type"]

MAX_FRAME_BYTES = 15_000_000  # far above any Open API message; a larger length is corruption
_LENGTH = struct.Struct(">I")


def _message_classes() -> dict[int, type]:
    table: dict[int, type] = {}
    for module in (common, oa):
        for name in dir(module):
            cls = getattr(module, name)
            descriptor = getattr(cls, "DESCRIPTOR", None)
            if not name.startswith("Proto") or descriptor is None or name == "ProtoMessage":
                continue
            fields = getattr(descriptor, "fields_by_name", {})
            if "payloadType" in fields:
                table[int(cls().payloadType)] = cls
    return table


PAYLOAD_CLASSES: dict[int, type] = _message_classes()


def payload_type(message: Any) -> int:
    return int(message.payloadType)


def payload_name(kind: int) -> str:
    cls = PAYLOAD_CLASSES.get(kind)
    return cls.__name__ if cls is not None else f"payload type {kind}"


def error_code_name(code: int | str) -> str:
    """The symbolic name of an Open API error code (both enums), or the code itself."""
    if isinstance(code, str):
        return code
    for enum in (model.ProtoOAErrorCode, common_model.ProtoErrorCode):
        try:
            return str(enum.Name(code))
        except ValueError:
            continue
    return str(code)


class FrameError(ValueError):
    """The byte stream is not a sequence of length-prefixed ProtoMessages."""


def encode(message: Any, client_msg_id: str | None = None) -> bytes:
    """One framed ProtoMessage carrying ``message``."""
    envelope = common.ProtoMessage(payloadType=payload_type(message),
                                   payload=message.SerializeToString())
    if client_msg_id is not None:
        envelope.clientMsgId = client_msg_id
    body = envelope.SerializeToString()
    return _LENGTH.pack(len(body)) + body


@dataclass(frozen=True)
class Received:
    """A decoded message: its payload type, the message (None for unknown types) and the id
    the request carried, if this is a reply."""

    kind: int
    message: Any
    client_msg_id: str | None

    @property
    def name(self) -> str:
        return payload_name(self.kind)


def decode(body: bytes) -> Received:
    """A ProtoMessage's bytes (without the length prefix) into its payload message."""
    envelope = common.ProtoMessage()
    try:
        envelope.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError, or a missing required field
        raise FrameError(f"not a ProtoMessage: {exc}") from None
    kind = int(envelope.payloadType)
    cls = PAYLOAD_CLASSES.get(kind)
    message = None
    if cls is not None:
        message = cls()
        try:
            message.ParseFromString(envelope.payload)
        except Exception as exc:
            raise FrameError(f"{cls.__name__} does not parse: {exc}") from None
    client_msg_id = envelope.clientMsgId if envelope.HasField("clientMsgId") else None
    return Received(kind, message, client_msg_id)


class FrameReader:
    """Splits a byte stream into ProtoMessage bodies, however the bytes were chunked."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete body now available, in order."""
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        start = 0
        while len(buf) - start >= 4:
            (length,) = _LENGTH.unpack_from(buf, start)
            if length > MAX_FRAME_BYTES:
                raise FrameError(f"frame length {length} exceeds {MAX_FRAME_BYTES} bytes")
            end = start + 4 + length
            if end > len(buf):
                break
            out.append(bytes(buf[start + 4:end]))
            start = end
        if start:
            del buf[:start]
        return out
