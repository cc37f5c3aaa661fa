"""Process-wide switches for tests: a no-wait mode and a default-clock override."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resilience_kit.clock import Clock


@dataclass
class _State:
    no_wait: bool = False
    clock: Clock | None = None


state = _State()
