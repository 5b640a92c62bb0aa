"""The channel between the master and one worker: a socketpair carrying length-prefixed JSON
messages, each an object with a "type". Both ends use asyncio streams over their half.

Master to worker: `hello` (config text and the routing state, before the worker listens),
`state` (a new routing state, acknowledged by `ack` with its version), `health` (active-check
results), `eject` (an endpoint ejected for the host), `counters` (answered by `counters` with
the same id), `ping` (answered by `pong`), `drain` (stop accepting, finish in flight, exit).
Worker to master: `up`, `ready`, `ack`, `ejected` (it ejected an endpoint itself), `counters`,
`pong`.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Final

import orjson

__all__ = ["MAX_MESSAGE", "ChannelClosed", "encode", "read_message"]

# A message holds at most the config text, the routing state or one worker's counters with its
# diff samples (a few MiB at the largest settings); past this the peer is broken, not busy.
MAX_MESSAGE: Final = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other end closed the channel or sent something that is not a message."""


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_MESSAGE:
            raise ChannelClosed(f"message of {length} bytes is over {MAX_MESSAGE}")
        message = orjson.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError) as err:
        raise ChannelClosed("channel closed") from err
    except orjson.JSONDecodeError as err:
        raise ChannelClosed(f"not a message: {err}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ChannelClosed("not a message: no type")
    return message
