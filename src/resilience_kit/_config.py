"""Process-wide switches for tests: a no-wait mode and a default-clock override."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilience_kit.clock import Clock


class _State:
    # A plain class, not a dataclass: `dataclasses` imports `inspect`, which every
    # policy would then pay for at import time.
    __slots__ = ("clock", "no_wait")

    def __init__(self) -> None:
        self.no_wait = False
        self.clock: Clock | None = None


state = _State()
