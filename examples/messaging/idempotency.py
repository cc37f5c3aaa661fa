"""Idempotent charges: retries, duplicates and a declined card never charge twice.

The Billing service renews subscriptions. Its scheduler retries a renewal whose answer
was lost, two workers sometimes pick up the same renewal, and its HTTP API gets
double-submitted POSTs. `@idempotent` and `IdempotencyMiddleware` make each renewal
charge the card at most once - shown here on the in-memory store; the SQLite,
PostgreSQL and Redis stores behave the same.

    python examples/messaging/idempotency.py
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import anyio
from pydantic import BaseModel

from resilience_kit.errors import IdempotencyConflictError
from resilience_kit.messaging import IdempotencyMiddleware, idempotent
from resilience_kit.stores.memory import MemoryStore
from resilience_kit.testing import VirtualClock

clock = VirtualClock(start=0.0)
store = MemoryStore(clock=clock)
card_charges: list[tuple[str, int]] = []


class Receipt(BaseModel):
    renewal: str
    cents: int
    charged_at: datetime


class CardDeclined(Exception):
    """The processor's answer: storing it means a retry does not try the card again."""


@idempotent(
    store.idempotency,
    key="renewal_id",
    scope="tenant",
    name="billing.renew",
    store_failures=(CardDeclined,),
    clock=clock,
)
async def renew(tenant: str, renewal_id: str, cents: int) -> Receipt:
    card_charges.append((tenant, cents))  # the call to the card processor
    await clock.asleep(0.2)  # it takes a while
    if cents > 10_000:
        raise CardDeclined(f"{tenant}: insufficient funds for {cents} cents")
    return Receipt(
        renewal=renewal_id, cents=cents, charged_at=datetime(2026, 1, 1, tzinfo=timezone.utc)
    )


async def main() -> None:
    print("== the scheduler retries a renewal whose answer was lost")
    first = await renew("acme", "renewal-2026-01", 4_900)
    retry = await renew("acme", "renewal-2026-01", 4_900)
    print(f"  first: {first!r}")
    print(f"  retry: the stored receipt, a {type(retry).__name__}, equal: {retry == first}")
    print(f"  card charged {len(card_charges)} time(s)")

    print("\n== another tenant may use the same renewal id")
    await renew("globex", "renewal-2026-01", 2_900)
    print(f"  charges: {card_charges}")

    print("\n== the same key for another amount is refused")
    try:
        await renew("acme", "renewal-2026-01", 9_900)
    except IdempotencyConflictError as exc:
        print(f"  {type(exc).__name__}: {exc}")

    print("\n== five workers pick up one renewal at once: one charges, four wait for it")
    receipts: list[Receipt] = []

    async def worker() -> None:
        receipts.append(await renew("initech", "renewal-2026-02", 1_900))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(worker)
    same = all(receipt == receipts[0] for receipt in receipts)
    charged = sum(1 for tenant, _ in card_charges if tenant == "initech")
    print(f"  {len(receipts)} receipts, all equal: {same}; initech charged {charged} time(s)")

    print("\n== a declined card is an answer: stored, and raised again without a new try")
    for attempt in (1, 2):
        try:
            await renew("hooli", "renewal-2026-03", 50_000)
        except CardDeclined as exc:
            print(f"  attempt {attempt}: CardDeclined({exc})")
    print(f"  hooli's card tried {sum(1 for t, _ in card_charges if t == 'hooli')} time(s)")

    print("\n== a crashed worker's claim (written by hand here) expires after lock_for")
    await store.idempotency.claim(
        "billing.renew:umbrella:renewal-2026-04", "?", token="crashed", lock_for=60.0
    )
    try:
        await renew("umbrella", "renewal-2026-04", 900)
    except IdempotencyConflictError:
        print("  while the crashed claim holds the key: refused (IdempotencyConflictError)")
    clock.advance(60.0)
    receipt = await renew("umbrella", "renewal-2026-04", 900)
    print(f"  60 s later: charged, {receipt.cents} cents")

    await http_api()


async def http_api() -> None:
    print("\n== the HTTP API: Idempotency-Key header, any ASGI app")

    async def renewals_app(scope: Any, receive: Any, send: Any) -> None:
        request = json.loads((await receive())["body"])
        receipt = await renew(request["tenant"], request["renewal"], request["cents"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": receipt.model_dump_json().encode()})

    app = IdempotencyMiddleware(renewals_app, store.idempotency, required=True)

    async def post(key: bytes | None, body: dict[str, Any]) -> str:
        headers = [(b"idempotency-key", key)] if key else []
        scope = {"type": "http", "method": "POST", "path": "/renewals", "headers": headers}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": json.dumps(body).encode()}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        replayed = dict(sent[0]["headers"]).get(b"idempotency-replayed", b"false").decode()
        return f"{sent[0]['status']} replayed={replayed} {sent[1]['body'].decode()[:60]}"

    order = {"tenant": "wayne", "renewal": "renewal-2026-05", "cents": 7_900}
    print(f"  POST            -> {await post(b'k-1', order)}")
    print(f"  POST (again)    -> {await post(b'k-1', order)}")
    print(f"  POST (changed)  -> {await post(b'k-1', {**order, 'cents': 1})}")
    print(f"  POST (no key)   -> {await post(None, order)}")
    print(f"\n== in all, {len(card_charges)} card charges: {card_charges}")


anyio.run(main)
