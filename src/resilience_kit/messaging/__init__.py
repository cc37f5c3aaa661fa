"""Messaging reliability: outbox and relay, inbox, dead letters, resilient consumers.

- `Event`: the envelope every message travels in.
- `Outbox` + `OutboxRelay`: events written in your own database transaction, then
  published at least once, in order per key.
- `Inbox`: de-duplication by event id, so effects happen once.
- `DeadLetterQueue`: what was given up on, to list, replay or purge.
- `ResilientConsumer`: de-duplicate, retry, dead-letter, keep consuming.
- `BatchWriter`: write items in batches from a bounded queue (back-pressure), retrying
  failed batches without losing an item.
- `Saga` + `SagaStep`: steps across services, each with a compensation; on a failure
  the steps done are undone in reverse order; resumable from a `SagaJournal`.
- `Projection`: a read model folded from events, in versions: validated, rebuilt from
  the event log beside the one serving, and switched in one step.
- `idempotent` + `IdempotencyMiddleware`: run a call once per idempotency key; the
  Idempotency-Key header contract for any ASGI app.
- The store protocols (`OutboxStore`, `DeadLetterStore`, `InboxStore`,
  `IdempotencyStore`, `ProjectionStore`) and transport protocols (`Publisher`,
  `Subscriber`) that the backends in `resilience_kit.stores` and
  `resilience_kit.transports` implement.

Examples:
    >>> from resilience_kit.messaging import Event
    >>> event = Event(type="org.member_removed", key="org:acme", payload={"user": "ann"})
    >>> Event.from_json(event.to_json()) == event
    True
"""

from resilience_kit._exports import present
from resilience_kit.errors import EventTooLargeError as EventTooLargeError
from resilience_kit.errors import IdempotencyConflictError as IdempotencyConflictError
from resilience_kit.errors import IdempotencyError as IdempotencyError
from resilience_kit.errors import IdempotencyInProgressError as IdempotencyInProgressError
from resilience_kit.errors import IdempotencyKeyError as IdempotencyKeyError
from resilience_kit.errors import IdempotencyResultError as IdempotencyResultError
from resilience_kit.errors import InvalidEventError as InvalidEventError
from resilience_kit.errors import MalformedEventError as MalformedEventError
from resilience_kit.messaging._asgi import IdempotencyMiddleware as IdempotencyMiddleware
from resilience_kit.messaging._batch import BatchWriter as BatchWriter
from resilience_kit.messaging._batch import WriterStats as WriterStats
from resilience_kit.messaging._consumer import Outcome as Outcome
from resilience_kit.messaging._consumer import ResilientConsumer as ResilientConsumer
from resilience_kit.messaging._dead_letter import REPLAYS_HEADER as REPLAYS_HEADER
from resilience_kit.messaging._dead_letter import DeadLetterQueue as DeadLetterQueue
from resilience_kit.messaging._dead_letter import ReplayReport as ReplayReport
from resilience_kit.messaging._event import Event as Event
from resilience_kit.messaging._idempotency import idempotent as idempotent
from resilience_kit.messaging._inbox import Inbox as Inbox
from resilience_kit.messaging._outbox import Outbox as Outbox
from resilience_kit.messaging._projection import Projection as Projection
from resilience_kit.messaging._projection import ProjectionStore as ProjectionStore
from resilience_kit.messaging._projection import RebuildReport as RebuildReport
from resilience_kit.messaging._projection import ValidationReport as ValidationReport
from resilience_kit.messaging._protocols import DeadLetterStore as DeadLetterStore
from resilience_kit.messaging._protocols import Delivery as Delivery
from resilience_kit.messaging._protocols import IdempotencyStore as IdempotencyStore
from resilience_kit.messaging._protocols import InboxStore as InboxStore
from resilience_kit.messaging._protocols import OutboxEntry as OutboxEntry
from resilience_kit.messaging._protocols import OutboxStore as OutboxStore
from resilience_kit.messaging._protocols import Publisher as Publisher
from resilience_kit.messaging._protocols import Subscriber as Subscriber
from resilience_kit.messaging._records import BlockedRow as BlockedRow
from resilience_kit.messaging._records import DeadLetter as DeadLetter
from resilience_kit.messaging._records import DeadLetterFilter as DeadLetterFilter
from resilience_kit.messaging._records import IdempotencyRecord as IdempotencyRecord
from resilience_kit.messaging._records import OutboxMessage as OutboxMessage
from resilience_kit.messaging._records import OutboxStatus as OutboxStatus
from resilience_kit.messaging._relay import OutboxRelay as OutboxRelay
from resilience_kit.messaging._relay import RelayReport as RelayReport
from resilience_kit.messaging._saga import MemorySagaJournal as MemorySagaJournal
from resilience_kit.messaging._saga import Saga as Saga
from resilience_kit.messaging._saga import SagaJournal as SagaJournal
from resilience_kit.messaging._saga import SagaMark as SagaMark
from resilience_kit.messaging._saga import SagaResult as SagaResult
from resilience_kit.messaging._saga import SagaStatus as SagaStatus
from resilience_kit.messaging._saga import SagaStep as SagaStep
from resilience_kit.messaging._saga import saga_plan as saga_plan

__all__ = (
    "REPLAYS_HEADER",
    "BatchWriter",
    "BlockedRow",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DeadLetterStore",
    "Delivery",
    "Event",
    "EventTooLargeError",
    "IdempotencyConflictError",
    "IdempotencyError",
    "IdempotencyInProgressError",
    "IdempotencyKeyError",
    "IdempotencyMiddleware",
    "IdempotencyRecord",
    "IdempotencyResultError",
    "IdempotencyStore",
    "Inbox",
    "InboxStore",
    "InvalidEventError",
    "MalformedEventError",
    "MemorySagaJournal",
    "Outbox",
    "OutboxEntry",
    "OutboxMessage",
    "OutboxRelay",
    "OutboxStatus",
    "OutboxStore",
    "Outcome",
    "Projection",
    "ProjectionStore",
    "Publisher",
    "RebuildReport",
    "RelayReport",
    "ReplayReport",
    "ResilientConsumer",
    "Saga",
    "SagaJournal",
    "SagaMark",
    "SagaResult",
    "SagaStatus",
    "SagaStep",
    "Subscriber",
    "ValidationReport",
    "WriterStats",
    "idempotent",
    "saga_plan",
)

# Reprs, docs and pickles name where users import a class from, not its private module.
present(__name__, globals(), __all__)
