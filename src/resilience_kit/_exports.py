"""Make re-exported classes present themselves as ``resilience_kit.X`` (reprs and docs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def present_at_top_level(namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` to ``"resilience_kit"`` on the classes among ``names``.

    Called once, by the top-level package, for everything it re-exports.

    Exceptions keep their module: they are documented and imported as
    ``resilience_kit.errors``.
    """
    for name in names:
        obj = namespace[name]
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            obj.__module__ = "resilience_kit"
