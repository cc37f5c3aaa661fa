"""Values to bytes and back: the one codec stored results and cached values go through.

`@idempotent` stores a function's results by its return annotation, and
`RedisCacheStore` stores cached values by its ``value_type``; both write JSON with
pydantic, and both read it back the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pydantic
import pydantic_core

__all__ = ("ValueCodec",)

# What a stored value needs to come back as it was: raw bytes are not UTF-8 text, so
# they are written as base64; infinities and NaN are written as such, not as null.
_ROUND_TRIP: dict[str, Any] = {
    "ser_json_bytes": "base64",
    "val_json_bytes": "base64",
    "ser_json_inf_nan": "constants",
}
_ROUND_TRIP_BYTES = ("base64", "hex")
# Schemas with no JSON form at all, unless they bring a serializer of their own.
_NO_JSON = {
    "callable": "a callable",
    "is-instance": "an arbitrary class",
    "is-subclass": "a class",
    "generator": "an iterator",
}
_NOT_SCHEMAS = frozenset({"metadata", "serialization", "config", "ref", "json_schema_input_schema"})


class ValueCodec:
    """JSON bytes for values: by a pydantic schema, or plain JSON without one."""

    __slots__ = ("_serializer", "_validator", "adapter")

    def __init__(self, adapter: pydantic.TypeAdapter[Any] | None = None) -> None:
        self.adapter = adapter
        self._serializer: pydantic_core.SchemaSerializer | None = None
        self._validator: pydantic_core.SchemaValidator | None = None
        if adapter is not None:
            self._serializer = adapter.serializer
            self._validator = adapter.validator  # type: ignore[assignment]

    @classmethod
    def for_type(cls, kind: Any, *, bytes_as_base64: bool = False) -> ValueCodec:
        """The codec of values of type ``kind``.

        Args:
            kind: the type (a model, a dataclass, ``list[int]``, ``Any``...).
            bytes_as_base64: write values so that they read back as they were: ``bytes``
                as base64 (not as UTF-8 text), infinities and NaN as such. A pydantic
                model or dataclass keeps its own configuration (see `round_trip_problem`).

        Raises:
            pydantic.PydanticUserError: pydantic cannot use ``kind``.
        """
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(kind)
        codec = cls(adapter)
        if bytes_as_base64:
            # The configuration reaches every part of the schema that has no prebuilt
            # validator of its own: a plain dataclass or TypedDict too, even at the top.
            schema = _configured(adapter.core_schema)
            codec._serializer = pydantic_core.SchemaSerializer(schema, _ROUND_TRIP)  # type: ignore[arg-type]
            codec._validator = pydantic_core.SchemaValidator(schema, _ROUND_TRIP)  # type: ignore[arg-type]
        return codec

    def round_trip_problem(self) -> str | None:
        """Why some values of the type cannot be stored and read back, or ``None``.

        A ``bytes`` field of a pydantic model (or pydantic dataclass) that does not
        configure ``ser_json_bytes`` and ``val_json_bytes`` as ``"base64"`` (or
        ``"hex"``) writes bytes as UTF-8 text, which most bytes are not; a callable, an
        iterator or an arbitrary class has no JSON form.
        """
        if self.adapter is None:
            return None
        schema = self.adapter.core_schema
        definitions: dict[str, Any] = {}
        _collect_definitions(schema, definitions)
        return next(_problems(schema, _ROUND_TRIP, definitions, set(), ""), None)

    def dump(self, value: object) -> bytes:
        """``value`` as JSON bytes.

        Raises:
            ValueError: pydantic cannot serialise it (or, typed, it does not fit the type).
            TypeError: ditto, for some values.
        """
        if self._serializer is None:
            return pydantic_core.to_json(value)
        return self._serializer.to_json(value, warnings="error")

    def load(self, data: bytes) -> Any:
        """The value ``data`` holds.

        Raises:
            ValueError: ``data`` is not JSON, or (typed) not a value of the type; a
                `pydantic.ValidationError` when typed.
        """
        if self._validator is None:
            return pydantic_core.from_json(data)
        return self._validator.validate_json(data)

    def survives(self, value: object, data: bytes) -> bool:
        """Whether ``data`` (from `dump`) reads back as ``value``.

        Typed, reading back must succeed (it raises like `load` otherwise); plain JSON
        must read back equal, or a tuple would come back a list.
        """
        loaded = self.load(data)
        return self.adapter is not None or loaded == value


def _configured(node: Any) -> Any:
    """A copy of a core schema whose every ``config`` asks for round-trip JSON."""
    if isinstance(node, dict):
        copied = {key: _configured(value) for key, value in node.items()}
        if isinstance(copied.get("config"), dict):
            copied["config"] = {**copied["config"], **_ROUND_TRIP}
        return copied
    if isinstance(node, list):
        return [_configured(item) for item in node]
    return node


def _prebuilt(node: Mapping[str, Any]) -> bool:
    """Whether pydantic uses the class's own (prebuilt) validator and serializer here."""
    kind = node.get("cls")
    return isinstance(kind, type) and bool(vars(kind).get("__pydantic_complete__", False))


def _collect_definitions(node: Any, into: dict[str, Any]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "definitions":
            for definition in node.get("definitions", ()):
                into[definition["ref"]] = definition
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                _collect_definitions(value, into)
    elif isinstance(node, list):
        for item in node:
            _collect_definitions(item, into)


def _problems(
    node: Any, config: Mapping[str, Any], definitions: dict[str, Any], seen: set[str], where: str
) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _problems(item, config, definitions, seen, where)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "definition-ref":
        ref = node["schema_ref"]
        if ref not in seen and ref in definitions:
            seen.add(ref)
            yield from _problems(definitions[ref], config, definitions, seen, where)
        return
    if kind in ("model", "dataclass", "typed-dict") and isinstance(node.get("config"), dict):
        where = f"{getattr(node.get('cls'), '__qualname__', kind)}."
        own = node["config"]
        config = own if _prebuilt(node) else {**own, **_ROUND_TRIP}
    serialization = node.get("serialization")
    if isinstance(serialization, dict) and serialization.get("type") != "function-wrap":
        return  # a serializer of the user's own writes this part: theirs to round-trip
    if serialization is None:
        if kind == "bytes":
            written = config.get("ser_json_bytes", "utf8")
            read = config.get("val_json_bytes", "utf8")
            if written != read or written not in _ROUND_TRIP_BYTES:
                yield (
                    f"the bytes field {where.rstrip('.') or 'bytes'} is written as"
                    f" {written} text (model_config ser_json_bytes={written!r},"
                    f" val_json_bytes={read!r}), which most bytes are not: set"
                    " ser_json_bytes='base64' and val_json_bytes='base64' in the model's"
                    " config"
                )
                return
        if kind in _NO_JSON:
            yield f"{where or 'the value'} is {_NO_JSON[kind]}, which has no JSON form"
            return
    for key, value in node.items():
        if key in _NOT_SCHEMAS or key == "type":
            continue
        if kind == "dataclass-field" and key == "schema":
            yield from _problems(value, config, definitions, seen, f"{where}{node['name']}.")
            continue
        if kind in ("model-fields", "typed-dict") and key == "fields" and isinstance(value, dict):
            for field, schema in value.items():
                yield from _problems(schema, config, definitions, seen, f"{where}{field}.")
            continue
        yield from _problems(value, config, definitions, seen, where)
