"""RESP command packing for the async clients: linear in the command's size.

redis-py's async ``pack_command`` grows one buffer by re-joining it for every argument below
6 KB, so a command of many small arguments copies its buffer once per argument: an XACK of
1,000 ids, or the engine's script calls and decision-log writes (thousands of arguments a
batch), cost 2-3x what packing them once does. This packer gathers the pieces and joins them
once; arguments over ``BUFFER_CUTOFF`` stay separate chunks, as in redis-py, so large values
are never copied. hiredis's packer is not used: it is fast for small arguments but copies
large ones into one growing buffer (slower than redis-py's for a batch of ~2 KB events).

The wire bytes are exactly redis-py's (tests/automations/test_command_packing.py).
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import DataError

BUFFER_CUTOFF = 6000  # redis-py's: larger arguments are sent as chunks of their own


def pack_command(*args: Any) -> list[bytes | memoryview]:
    """``args`` as RESP chunks for ``writelines`` (encoding as redis-py's ``Encoder``: bytes as
    they are, str as UTF-8, int and float by ``repr``, anything else refused)."""
    head = args[0]
    if isinstance(head, str):
        args = (*head.encode().split(), *args[1:])
    elif b" " in head:
        args = (*head.split(), *args[1:])
    output: list[bytes | memoryview] = []
    pieces: list[bytes | memoryview] = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)  # the usual two first: this loop runs for every argument
        if kind is bytes:
            data: bytes | memoryview = arg
        elif kind is str:
            data = arg.encode()
        else:
            data = _encoded(arg)
        if isinstance(data, memoryview):
            size, apart = data.nbytes, True
        else:
            size = len(data)
            apart = size > BUFFER_CUTOFF
        if apart:
            pieces.append(b"$%d\r\n" % size)
            output.append(b"".join(pieces))
            output.append(data)
            pieces = [b"\r\n"]
        else:
            pieces += (b"$%d\r\n" % size, data, b"\r\n")
    output.append(b"".join(pieces))
    return output


def _encoded(arg: Any) -> bytes | memoryview:
    """The other arguments redis-py accepts (subclasses of bytes and str, memoryviews, numbers
    but not bools), or its refusal."""
    if isinstance(arg, memoryview):
        return arg
    if isinstance(arg, bytes):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return repr(arg).encode()
    raise DataError(f"Invalid input of type: '{type(arg).__name__}'. Convert to a bytes, "
                    f"string, int or float first.")


class FastPacking:
    """Mixed into a redis-py async connection class (``fast_packing``)."""

    def pack_command(self, *args: Any) -> list[bytes | memoryview]:
        return pack_command(*args)


_CLASSES: dict[type, type] = {}


def fast_packing(connection_class: type) -> type:
    """``connection_class`` with this module's packer (the same class for the same input)."""
    if issubclass(connection_class, FastPacking):
        return connection_class
    made = _CLASSES.get(connection_class)
    if made is None:
        made = _CLASSES[connection_class] = type(
            f"FastPacking{connection_class.__name__}", (FastPacking, connection_class), {})
    return made
