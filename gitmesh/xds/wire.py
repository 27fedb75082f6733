"""The protobuf wire format, just enough to assemble messages from bytes already serialized.

A length-delimited field is its key, its length and its bytes; a repeated message field is its
elements written one after another. So a message whose parts are shared, already encoded, can be
written without building it (and without copying every part into a new message first).
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_head(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field: what precedes its ``length`` bytes."""
    return varint(number << 3 | 2) + varint(length)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) numbered ``number``."""
    return field_head(number, len(payload)) + payload


def wrapped(number: int, parts: list[bytes]) -> list[bytes]:
    """A message field numbered ``number`` whose content is ``parts``, left in its pieces."""
    return [field_head(number, sum(len(p) for p in parts)), *parts]
