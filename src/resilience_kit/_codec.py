"""Values to bytes and back: the one codec stored results and cached values go through.

`@idempotent` stores a function's results by its return annotation, and
`RedisCacheStore` stores cached values by its ``value_type``; both write JSON with
pydantic, and both read it back the same way.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pydantic_core

__all__ = ("ValueCodec",)

# Raw bytes are not UTF-8 text: store them as base64, so that any bytes round-trip.
_BYTES_AS_BASE64 = pydantic.ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


class ValueCodec:
    """JSON bytes for values: by a pydantic `TypeAdapter`, or plain JSON without one."""

    __slots__ = ("adapter",)

    def __init__(self, adapter: pydantic.TypeAdapter[Any] | None = None) -> None:
        self.adapter = adapter

    @classmethod
    def for_type(cls, kind: Any, *, bytes_as_base64: bool = False) -> ValueCodec:
        """The codec of values of type ``kind``.

        Args:
            kind: the type (a model, a dataclass, ``list[int]``, ``Any``...).
            bytes_as_base64: write ``bytes`` as base64 (not as UTF-8 text), unless
                ``kind`` is a model, whose own configuration rules.

        Raises:
            pydantic.PydanticUserError: pydantic cannot use ``kind``.
        """
        if not bytes_as_base64:
            return cls(pydantic.TypeAdapter(kind))
        try:
            return cls(pydantic.TypeAdapter(kind, config=_BYTES_AS_BASE64))
        except pydantic.PydanticUserError as exc:
            if exc.code != "type-adapter-config-unused":
                raise
            return cls(pydantic.TypeAdapter(kind))

    def dump(self, value: object) -> bytes:
        """``value`` as JSON bytes.

        Raises:
            ValueError: pydantic cannot serialise it (or, typed, it does not fit the type).
            TypeError: ditto, for some values.
        """
        if self.adapter is None:
            return pydantic_core.to_json(value)
        return self.adapter.dump_json(value, warnings="error")

    def load(self, data: bytes) -> Any:
        """The value ``data`` holds.

        Raises:
            ValueError: ``data`` is not JSON, or (typed) not a value of the type; a
                `pydantic.ValidationError` when typed.
        """
        if self.adapter is None:
            return pydantic_core.from_json(data)
        return self.adapter.validate_json(data)

    def survives(self, value: object, data: bytes) -> bool:
        """Whether ``data`` (from `dump`) reads back as ``value``.

        Typed, reading back must succeed (it raises like `load` otherwise); plain JSON
        must read back equal, or a tuple would come back a list.
        """
        loaded = self.load(data)
        return self.adapter is not None or loaded == value
