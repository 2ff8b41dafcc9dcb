"""The bytes features of a serialized `tf.train.Example`, read and written without TensorFlow.

Only the protobuf wire format is needed: Example{features=1} -> Features{map feature=1}
-> Feature{bytes_list=1 | float_list=2 | int64_list=3} -> BytesList{repeated bytes value=1}.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import RecordFailure

_LEN = 2  # protobuf wire type of length-delimited fields


class ExampleParseError(RecordFailure, ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ExampleParseError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleParseError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) pairs of one message; nested messages stay as bytes."""
    out: list[tuple[int, bytes | int]] = []
    pos = 0
    value: bytes | int
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ExampleParseError("truncated field")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ExampleParseError(f"unsupported wire type {wire}")
        if number == 0 or pos > len(buf):
            raise ExampleParseError("malformed field")
        out.append((number, value))
    return out


def parse_bytes_features(serialized: bytes) -> dict[str, list[bytes]]:
    """The `bytes_list` features of an Example, by name; other kinds are skipped."""
    features: dict[str, list[bytes]] = {}
    for number, features_msg in _fields(serialized):
        if number != 1 or not isinstance(features_msg, bytes):
            continue
        for entry_number, entry in _fields(features_msg):
            if entry_number != 1 or not isinstance(entry, bytes):
                continue
            name, feature = None, b""
            for field_number, value in _fields(entry):
                if field_number == 1 and isinstance(value, bytes):
                    name = value.decode("utf-8")
                elif field_number == 2 and isinstance(value, bytes):
                    feature = value
            if name is None:
                raise ExampleParseError("feature without a name")
            values = [
                v
                for kind, bytes_list in _fields(feature)
                if kind == 1 and isinstance(bytes_list, bytes)
                for n, v in _fields(bytes_list)
                if n == 1 and isinstance(v, bytes)
            ]
            features[name] = values
    return features


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def build_example(features: Mapping[str, bytes | list[bytes]]) -> bytes:
    """Serialize an Example of bytes features (what `pack` writes and tests read back)."""
    entries = b""
    for name, values in features.items():
        if isinstance(values, bytes):
            values = [values]
        bytes_list = b"".join(_len_field(1, v) for v in values)
        feature = _len_field(1, bytes_list)
        entries += _len_field(1, _len_field(1, name.encode("utf-8")) + _len_field(2, feature))
    return _len_field(1, entries)
