"""Checks shared by the messaging primitives' constructors and methods."""

from __future__ import annotations

import re

from resilience_kit.errors import ConfigurationError

__all__ = ("check_name", "check_topic")

_NAME_MAX_LENGTH = 255
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_name(parameter: str, value: object) -> str:
    """A topic, consumer or relay name: a non-empty str of at most 255 printable characters."""
    if not isinstance(value, str):
        raise ConfigurationError(parameter, f"must be a str, got {type(value).__name__}")
    if not value:
        raise ConfigurationError(parameter, "must not be empty")
    if len(value) > _NAME_MAX_LENGTH:
        raise ConfigurationError(
            parameter, f"must be at most {_NAME_MAX_LENGTH} characters, got {len(value)}"
        )
    if _CONTROL.search(value):
        raise ConfigurationError(parameter, "must not contain control characters")
    return value


def check_topic(topic: object) -> str:
    """A topic name (see `check_name`)."""
    return check_name("topic", topic)
