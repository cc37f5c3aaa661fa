"""Protocols, records and aliases: for backend authors and for type annotations.

Nothing here is defined here: each name is re-exported from the package that defines
it (`resilience_kit.policies`, `.messaging`, `.caching`, `.security`, `.clock`), so
``isinstance`` checks and annotations agree whichever path a name was imported by.

- Store protocols a backend implements: `BreakerStore`, `CacheStore`, `OutboxStore`,
  `DeadLetterStore`, `InboxStore`, `IdempotencyStore`, `ProjectionStore`, `KeySource`; the transport
  protocols `Publisher` and `Subscriber`; the time protocols `Clock` and `TimerClock`.
- The records they take and return: `BreakerRecord`, `CacheRecord`, `OutboxEntry`,
  `OutboxMessage`, `OutboxStatus`, `BlockedRow`, `DeadLetter`, `DeadLetterFilter`,
  `IdempotencyRecord`, `Delivery`, `KeyVersion`.
- What the primitives hand back or to hooks: `RetryEvent`, `StateTransition`,
  `ThresholdExceeded`, `BreakerMetrics`, `CacheLookup`, `CacheStats`, `Served`, `FallbackEvent`,
  `RelayReport`, `ReplayReport`, `VerifiedToken`, `Outcome`.
- The base class of every call policy, `Policy`, and of cache policies, `CachePolicy`;
  the `Jitter` alias.

Examples:
    >>> from resilience_kit.stores.memory import MemoryBreakerStore
    >>> from resilience_kit.typing import BreakerStore
    >>> isinstance(MemoryBreakerStore(), BreakerStore)
    True
"""

from resilience_kit.caching import CacheLookup as CacheLookup
from resilience_kit.caching import CachePolicy as CachePolicy
from resilience_kit.caching import CacheRecord as CacheRecord
from resilience_kit.caching import CacheStats as CacheStats
from resilience_kit.caching import CacheStore as CacheStore
from resilience_kit.caching import FallbackEvent as FallbackEvent
from resilience_kit.caching import Served as Served
from resilience_kit.clock import Clock as Clock
from resilience_kit.clock import TimerClock as TimerClock
from resilience_kit.clock import TimerHandle as TimerHandle
from resilience_kit.messaging import BlockedRow as BlockedRow
from resilience_kit.messaging import DeadLetter as DeadLetter
from resilience_kit.messaging import DeadLetterFilter as DeadLetterFilter
from resilience_kit.messaging import DeadLetterStore as DeadLetterStore
from resilience_kit.messaging import Delivery as Delivery
from resilience_kit.messaging import IdempotencyRecord as IdempotencyRecord
from resilience_kit.messaging import IdempotencyStore as IdempotencyStore
from resilience_kit.messaging import InboxStore as InboxStore
from resilience_kit.messaging import OutboxEntry as OutboxEntry
from resilience_kit.messaging import OutboxMessage as OutboxMessage
from resilience_kit.messaging import OutboxStatus as OutboxStatus
from resilience_kit.messaging import OutboxStore as OutboxStore
from resilience_kit.messaging import Outcome as Outcome
from resilience_kit.messaging import ProjectionStore as ProjectionStore
from resilience_kit.messaging import Publisher as Publisher
from resilience_kit.messaging import RelayReport as RelayReport
from resilience_kit.messaging import ReplayReport as ReplayReport
from resilience_kit.messaging import Subscriber as Subscriber
from resilience_kit.policies import BreakerMetrics as BreakerMetrics
from resilience_kit.policies import BreakerRecord as BreakerRecord
from resilience_kit.policies import BreakerStore as BreakerStore
from resilience_kit.policies import Jitter as Jitter
from resilience_kit.policies import Policy as Policy
from resilience_kit.policies import RetryEvent as RetryEvent
from resilience_kit.policies import StateTransition as StateTransition
from resilience_kit.policies import ThresholdExceeded as ThresholdExceeded
from resilience_kit.security import KeySource as KeySource
from resilience_kit.security import KeyVersion as KeyVersion
from resilience_kit.security import VerifiedToken as VerifiedToken

__all__ = (
    "BlockedRow",
    "BreakerMetrics",
    "BreakerRecord",
    "BreakerStore",
    "CacheLookup",
    "CachePolicy",
    "CacheRecord",
    "CacheStats",
    "CacheStore",
    "Clock",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStore",
    "Delivery",
    "FallbackEvent",
    "IdempotencyRecord",
    "IdempotencyStore",
    "InboxStore",
    "Jitter",
    "KeySource",
    "KeyVersion",
    "OutboxEntry",
    "OutboxMessage",
    "OutboxStatus",
    "OutboxStore",
    "Outcome",
    "Policy",
    "ProjectionStore",
    "Publisher",
    "RelayReport",
    "ReplayReport",
    "RetryEvent",
    "Served",
    "StateTransition",
    "Subscriber",
    "ThresholdExceeded",
    "TimerClock",
    "TimerHandle",
    "VerifiedToken",
)
