"""Transports: where events are published and consumed, behind two small protocols.

Every transport is a `resilience_kit.messaging.Publisher` (``await publish(topic,
event)``) and gives `Subscriber` objects (iterate for `Delivery` objects, ``ack`` each
one, ``aclose``) through ``subscribe(topic, group=...)``. Delivery is at least once:
consumers de-duplicate by event id.

- `MemoryBus`: in one process, for tests and single-process services; can inject
  faults. Works on asyncio and trio.
- `RedisStreams`: Redis Streams with consumer groups, reclaiming a crashed consumer's
  messages (the ``redis`` extra). Works on asyncio and trio.
- `KafkaTransport`: Kafka through aiokafka, committing only handled offsets (the
  ``kafka`` extra). asyncio only.

Examples:
    >>> import anyio
    >>> from resilience_kit.messaging import Event
    >>> from resilience_kit.transports import MemoryBus
    >>> async def main() -> None:
    ...     async with MemoryBus() as bus:
    ...         await bus.publish("orgs", Event(type="org.created", key="org:acme", payload={}))
    ...         async with bus.subscribe("orgs", group="billing") as orgs:
    ...             async for delivery in orgs:
    ...                 event = Event.from_json(delivery.data)
    ...                 print(event.type, event.key, delivery.attempt)
    ...                 await orgs.ack(delivery)
    ...                 break
    >>> anyio.run(main)
    org.created org:acme 1
"""

from resilience_kit.transports.kafka import KafkaSubscriber as KafkaSubscriber
from resilience_kit.transports.kafka import KafkaTransport as KafkaTransport
from resilience_kit.transports.memory import MemoryBus as MemoryBus
from resilience_kit.transports.memory import MemorySubscriber as MemorySubscriber
from resilience_kit.transports.redis import RedisStreams as RedisStreams
from resilience_kit.transports.redis import RedisStreamSubscriber as RedisStreamSubscriber

__all__ = (
    "KafkaSubscriber",
    "KafkaTransport",
    "MemoryBus",
    "MemorySubscriber",
    "RedisStreamSubscriber",
    "RedisStreams",
)
