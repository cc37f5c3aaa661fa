"""Drills 12-14: the Notification scenarios of the failure-mode analysis.

Each drill puts the mail server (`reference_system.mail`) and Notification on the
`System`, publishes the contract's events, injects its fault, and judges the run from
the mail server's record of e-mails delivered and the in-app notifications written
(the `SideEffectSink`), the network's call record, and the operator's view of dead
letters (the ``resilience-kit`` command line) — never from Notification's counters.

Drills 13 and 14 get their events from the real producers (`Producers`): users sign
up with Identity and are added to orgs by Organization. A stand-in producer
(`Deployment.publish`) publishes, on the bus, exactly what the contract says, where a
drill needs what no correct producer does on purpose: drill 12 every event delivered
2-3 times (a relay that crashed after publishing, a broker redelivering), drill 13 its
one poison event (a role Organization does not have yet), at a chosen position.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import anyio

from reference_system.core.drill import DrillResult, count, drill
from reference_system.core.records import RequestRecord, Workload
from reference_system.core.system import System
from reference_system.drills.identity import PASSWORD
from reference_system.identity import Identity
from reference_system.keys import KeyVault
from reference_system.mail import MailServer, install
from reference_system.notification import Notification
from reference_system.organization import Organization
from resilience_kit import cli
from resilience_kit.messaging import Event

DOMAIN = "example.com"
ROLES = ("admin", "member")
Notice = tuple[str, str]  # (user, tag): what the user is told about, once


def signed_up(user: str) -> Event:
    return Event(
        type="identity.user_signed_up",
        key=f"user:{user}",
        payload={"user_id": user, "email": f"{user}@{DOMAIN}"},
    )


def member_added(org: str, user: str, role: str) -> Event:
    return Event(
        type="organization.member_added",
        key=f"org:{org}",
        payload={"org_id": org, "user_id": user, "role": role},
    )


def notice(event: Event) -> Notice:
    """What an event must tell its user: one e-mail of this tag."""
    tag = "welcome" if event.type == "identity.user_signed_up" else "member-added"
    return str(event.payload["user_id"]), tag


@dataclass
class Deployment:
    """The mail server, Notification, and every event the stand-in producer published."""

    system: System
    mail: MailServer
    notification: Notification
    published: dict[Notice, float] = field(default_factory=dict)  # first publication
    events: dict[Notice, Event] = field(default_factory=dict)
    deliveries: int = 0  # publications, duplicates included

    async def publish(self, event: Event) -> None:
        """Publish ``event`` as its producer would (topic named after the service)."""
        topic = event.type.split(".", 1)[0]
        self.published.setdefault(notice(event), self.system.now())
        self.events[notice(event)] = event
        self.deliveries += 1
        await self.system.bus.publish(topic, event)


def deploy(system: System) -> Deployment:
    mail = install(system)
    [notification] = system.add("notification", Notification)
    return Deployment(system, mail, notification)


@dataclass
class Producers:
    """The real producers of Notification's events: Identity (users sign up) and
    Organization (orgs created, members added). A notice counts as published when the
    write that makes its event is accepted (the outbox publishes it right after)."""

    deployment: Deployment
    workload: Workload

    @classmethod
    def deploy(cls, deployment: Deployment) -> Producers:
        system = deployment.system
        vault = KeyVault(system.seed)
        vault.create("v1")
        # No gateway: nothing here needs a login; the workload calls the services.
        system.add("identity", lambda ctx: Identity(ctx, vault=vault))
        system.add("organization", Organization)
        return cls(deployment, system.workload())

    def _accepted(self, record: RequestRecord, item: Notice) -> None:
        if record.status == 201:
            self.deployment.published.setdefault(item, record.finished)

    async def sign_up(self, user: str) -> None:
        record = await self.workload.request(
            user,
            "signup",
            "POST",
            "http://identity/signup",
            json={"username": user, "password": PASSWORD, "email": f"{user}@{DOMAIN}"},
        )
        self._accepted(record, (user, "welcome"))

    async def add(self, org: str, user: str, role: str) -> None:
        record = await self.workload.request(
            "admin",
            "add-member",
            "POST",
            f"http://organization/orgs/{org}/members",
            json={"user_id": user, "role": role},
        )
        self._accepted(record, (user, "member-added"))

    async def orgs(self, orgs: list[str]) -> None:
        """Create ``orgs``, each with an owner of its own (a sign-up, the first member)."""
        for org in orgs:
            await self.sign_up(f"owner-{org}")
        # Once Notification knows the owners' addresses (a member_added that overtakes
        # its sign-up waits for the address, which is not what the drills measure).
        await drain(self.deployment, within=60.0, then=0.0)
        for org in orgs:
            owner = f"owner-{org}"
            record = await self.workload.request(
                "admin",
                "create-org",
                "POST",
                "http://organization/orgs",
                json={"org_id": org, "owner_id": owner, "name": org.title()},
            )
            self._accepted(record, (owner, "member-added"))


def delivered(system: System, kind: str) -> dict[Notice, list[float]]:
    """When each notice reached its user, by channel: the mail server's record of
    e-mails (``email``) or the in-app notifications written (``in_app``)."""
    found: dict[Notice, list[float]] = defaultdict(list)
    for effect in system.sink.of(kind):
        if kind == "email":
            user = str(effect.details["to"]).removesuffix(f"@{DOMAIN}")
        else:
            user = str(effect.details["user"])
        found[user, str(effect.details["tag"])].append(effect.at)
    return found


async def drain(deployment: Deployment, *, within: float, then: float = 30.0) -> None:
    """Wait until every notice published has its e-mail (at most ``within`` seconds),
    then ``then`` seconds more, for a late duplicate to show."""
    system = deployment.system
    deadline = system.now() + within
    while system.now() < deadline:
        emails = delivered(system, "email")
        if all(emails.get(n) for n in deployment.published):
            break
        await system.sleep(2.0)
    await system.sleep(then)


def tally(result: DrillResult, deployment: Deployment, notices: Iterable[Notice]) -> None:
    """Notifications as the drill's "requests": served (e-mailed, no fallback), degraded
    (the in-app fallback told the user first), failed (no e-mail: lost)."""
    system = deployment.system
    emails, in_app = delivered(system, "email"), delivered(system, "in_app")
    for item in notices:
        if not emails.get(item):
            result.failed += 1
        elif in_app.get(item):
            result.degraded += 1
        else:
            result.served += 1
    result.events_lost = result.failed
    result.duplicate_effects = system.sink.duplicates("email") + system.sink.duplicates("in_app")
    result.dependency_calls = system.network.calls_to("mail")


async def operator(system: System, *argv: str) -> Any:
    """Run ``resilience-kit <argv> --json`` against Notification's database, as an operator
    would from a shell (in a worker thread: the command runs its own event loop)."""
    url = f"sqlite:///{system.stores['notification'].path}"
    args = [*argv, "--store", url, "--json"]

    def run() -> str:
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(io.StringIO()):
            code = cli.main(args)
        if code != 0:
            raise RuntimeError(f"resilience-kit {' '.join(argv)} exited with {code}")
        return out.getvalue()

    return json.loads(await anyio.to_thread.run_sync(run))


async def dead_letters(system: System) -> list[dict[str, Any]]:
    document = await operator(system, "dead-letters", "list")
    return list(document["dead_letters"])


# -- 12. duplicate events -------------------------------------------------------------------


@drill(
    name="notification-duplicate-events",
    number=12,
    service="Notification",
    scenario="Duplicate events: the bus delivers each event 2-3 times",
    fault=(
        "every event published 2 or 3 times (same id, the copies up to 30 s late); the "
        "mail server's acknowledgements lost (network fault: drop) in 3 windows"
    ),
    mitigations=("inbox", "idempotency-key"),
    criterion="0 duplicate e-mails; every event notified once",
    page="notification-duplicate-events.md",
)
async def duplicate_events(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system)
    users = [f"user-{n}" for n in range(30)]
    orgs = [f"org-{n}" for n in range(6)]
    windows: list[tuple[float, float]] = []

    async def copies(event: Event) -> None:
        await deployment.publish(event)
        for _ in range(rand.randint(1, 2)):  # at-least-once: redelivered, maybe late
            await system.sleep(rand.uniform(0.0, 30.0))
            await deployment.publish(event)

    async def user_life(user: str, group: Any) -> None:
        await system.sleep(rand.uniform(0.0, 90.0))
        group.start_soon(copies, signed_up(user))
        await system.sleep(rand.uniform(1.0, 20.0))
        group.start_soon(copies, member_added(rand.choice(orgs), user, rand.choice(ROLES)))

    async def chaos() -> None:
        for at in sorted(rand.uniform(5.0, 90.0) for _ in range(3)):
            await system.sleep_until(max(at, system.now()))
            fault = system.network.inject("drop", "mail")
            began = system.now()
            # Hold it until an acknowledgement was actually lost, then a little longer.
            while not _met(system, "drop", began) and system.now() < began + 20.0:
                await system.sleep(0.25)
            await system.sleep(rand.uniform(0.5, 2.0))
            system.network.clear(fault)
            windows.append((began, system.now()))

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for user in users:
            group.start_soon(user_life, user, group)
    await drain(deployment, within=300.0)

    result = DrillResult()
    tally(result, deployment, deployment.published)
    emails = delivered(system, "email")
    lost_acks = sum(1 for call in system.network.calls if call.fault == "drop")
    duplicates = system.sink.duplicates("email")
    result.check(
        "0 duplicate e-mails",
        duplicates == 0,
        f"{duplicates} duplicate e-mails from {deployment.deliveries} deliveries of "
        f"{len(deployment.published)} events and {lost_acks} lost acknowledgements",
    )
    once = sum(1 for n in deployment.published if len(emails.get(n, [])) == 1)
    result.check(
        "every event notified by e-mail exactly once",
        once == len(deployment.published),
        f"{once} of {len(deployment.published)} events",
    )
    result.check(
        "the faults happened (duplicates delivered, acknowledgements lost)",
        deployment.deliveries >= 2 * len(deployment.published) and lost_acks > 0,
        f"{deployment.deliveries} deliveries, {lost_acks} acknowledgements lost",
    )
    result.time_to_recover = max(
        (max(emails[n]) - deployment.published[n] for n in deployment.published if n in emails),
        default=None,
    )
    result.notes.append(
        f"the mail server's acknowledgements were dropped in {len(windows)} windows; "
        "time to recover: the longest wait from an event to its e-mail"
    )
    return result


def _met(system: System, kind: str, since: float) -> bool:
    return any(call.fault == kind and call.at >= since for call in system.network.calls)


# -- 13. poison message ---------------------------------------------------------------------

HEAD_OF_LINE_BOUND = 10.0  # 3 attempts' backoff (<= 1.5 s) and the dispatch, with room


@drill(
    name="notification-poison-message",
    number=13,
    service="Notification",
    scenario="Poison message: an event the handler can never process",
    fault=(
        "organization.member_added with a role Notification has no wording for (a "
        "producer ahead of its consumers), among 24 good ones; one good event meets a "
        "locked database on its first attempt"
    ),
    mitigations=("dead-lettering", "retries"),
    criterion=(
        "1 dead letter after 3 attempts; messages after it keep flowing (no head-of-line "
        "block); fix and replay (resilience-kit dead-letters replay) delivers it once"
    ),
    page="notification-poison-message.md",
)
async def poison_message(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system)
    producers = Producers.deploy(deployment)
    users = [f"user-{n}" for n in range(24)]
    orgs = [f"org-{n}" for n in range(4)]
    await producers.orgs(orgs)
    for user in users:
        await producers.sign_up(user)
        await system.sleep(rand.expovariate(1.0))
    await drain(deployment, within=60.0, then=5.0)

    poison_at = rand.randint(6, 15)
    transient_at = rand.choice([n for n in range(4, 20) if n != poison_at])
    poison: Event | None = None
    after_poison: list[Notice] = []
    for number, user in enumerate(users):
        await system.sleep(rand.expovariate(1 / 2.0))
        org = rand.choice(orgs)
        if number == poison_at:
            # The poison comes from a stand-in: Organization refuses a role it does not
            # know (422), so no real write makes this event — a producer a version ahead
            # of Notification's templates would. Published on the org's key, among the
            # real events, as that producer's outbox would.
            poison = member_added(org, user, "owner")
            await deployment.publish(poison)
        else:
            if number == transient_at:
                # Armed as the write is sent: the next transaction of Notification's,
                # storing this event's notification, finds the database locked once.
                deployment.notification.blip_database(1)
            await producers.add(org, user, rand.choice(ROLES))
            if poison is not None:
                after_poison.append((user, "member-added"))
    assert poison is not None
    await system.sleep(30.0)

    letters = await dead_letters(system)
    system.observe(f"dead letters: {len(letters)} listed by resilience-kit")
    emails = delivered(system, "email")
    late = [
        n
        for n in after_poison
        if not emails.get(n) or emails[n][0] - deployment.published[n] > HEAD_OF_LINE_BOUND
    ]
    slowest = max(
        (emails[n][0] - deployment.published[n] for n in after_poison if emails.get(n)),
        default=0.0,
    )

    # The operator reads the dead letter, deploys the fix, replays it through the outbox.
    fixed = await deployment.system.workload().request(
        "operator",
        "fix",
        "POST",
        "http://notification/admin/templates",
        json={"role": "owner", "wording": "the owner"},
    )
    source = "consumer:notification.organization"
    replay = await operator(system, "dead-letters", "replay", "--to", "outbox", "--source", source)
    system.observe(f"dead letters: {len(replay['replayed'])} replayed by resilience-kit")
    replayed_at = system.now()
    await drain(deployment, within=120.0)
    remaining = await dead_letters(system)

    result = DrillResult()
    good = [n for n in deployment.published if n != notice(poison)]
    tally(result, deployment, deployment.published)
    result.dead_lettered = len(letters)
    emails = delivered(system, "email")
    poisoned = emails.get(notice(poison), [])
    only = letters[0] if len(letters) == 1 else None
    result.check(
        "1 dead letter after 3 attempts",
        only is not None and only["event_id"] == str(poison.id) and only["attempts"] == 3,
        f"{count(len(letters), 'dead letter')}: "
        + ", ".join(f"{x['event_type']} after {count(x['attempts'], 'attempt')}" for x in letters),
    )
    result.check(
        "messages after the poison keep flowing (no head-of-line block)",
        not late and after_poison != [],
        f"{len(after_poison) - len(late)} of {len(after_poison)} later events e-mailed within "
        f"{HEAD_OF_LINE_BOUND:.0f}s (slowest {slowest:.1f}s)",
    )
    good_once = sum(1 for n in good if len(emails.get(n, [])) == 1)
    result.check(
        "every good event notified once (a passing fault is retried, not dead-lettered)",
        good_once == len(good),
        f"{good_once} of {len(good)}",
    )
    result.check(
        "fix and replay deliver it once",
        fixed.status == 200
        and len(replay["replayed"]) >= 1
        and len(poisoned) == 1
        and not remaining
        and system.sink.duplicates("email") == 0,
        f"replayed {len(replay['replayed'])}; {count(len(poisoned), 'e-mail')} for it; "
        f"{count(len(remaining), 'dead letter')} left",
    )
    if poisoned:
        result.time_to_recover = poisoned[0] - replayed_at
    result.notes.append("time to recover: from the replay to the poison event's e-mail")
    return result


# -- 14. e-mail down ------------------------------------------------------------------------

OUTAGE = 300.0
MAIL_OPEN_FOR = 30.0
IN_APP_BOUND = 10.0


@drill(
    name="notification-email-down",
    number=14,
    service="Notification",
    scenario="E-mail service unavailable for 5 minutes",
    fault=(
        "the mail server answers 503 to a few single requests (blips), then is down "
        "(network fault: down) for 300 s"
    ),
    mitigations=("retries", "breaker", "in-app-fallback", "queue-persistence"),
    criterion=(
        "0 notifications lost; in-app fallback during the outage; every held e-mail sent "
        "after recovery, none twice; blips invisible; calls to the down server bounded"
    ),
    page="notification-email-down.md",
)
async def email_down(system: System) -> DrillResult:
    rand = system.rand
    deployment = deploy(system)
    producers = Producers.deploy(deployment)
    orgs = [f"org-{n}" for n in range(5)]
    await producers.orgs(orgs)
    await drain(deployment, within=120.0, then=0.0)
    users = [f"user-{n}" for n in range(50)]
    start = system.now()  # what happens before is setup, not measured for latency
    fault_at = start + 200.0 + rand.uniform(0.0, 60.0)
    fault_end = fault_at + OUTAGE
    blips: list[float] = []

    async def user_life(user: str) -> None:
        await system.sleep(rand.uniform(0.0, 800.0))
        await producers.sign_up(user)
        await system.sleep(rand.uniform(2.0, 30.0))
        await producers.add(rand.choice(orgs), user, rand.choice(ROLES))

    async def chaos() -> None:
        # A blip (one or two 503s) after every few calls: never enough failures at once
        # to open the breaker, which is the outage's business.
        since = start
        while len(blips) < 3 and system.now() < fault_at - 40.0:
            await system.sleep(rand.uniform(5.0, 15.0))
            if system.network.calls_to("mail", since) >= 6:
                deployment.mail.fail_next(rand.randint(1, 2))
                since = system.now()
                blips.append(since)
        await system.sleep_until(fault_at)
        deployment.mail.heal()
        fault = system.network.inject("down", "mail")
        await system.sleep_until(fault_end)
        system.network.clear(fault)

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        for user in users:
            group.start_soon(user_life, user)
    await drain(deployment, within=300.0)

    result = DrillResult()
    tally(result, deployment, deployment.published)
    emails, in_app = delivered(system, "email"), delivered(system, "in_app")
    published = deployment.published
    lost = [n for n in published if not emails.get(n)]
    result.check(
        "0 notifications lost",
        not lost,
        f"{len(published) - len(lost)} of {len(published)} events e-mailed by the end",
    )
    during = [n for n, at in published.items() if fault_at <= at < fault_end]

    def told(item: Notice, channel: dict[Notice, list[float]]) -> bool:
        return bool(channel.get(item)) and channel[item][0] - published[item] <= IN_APP_BOUND

    in_time = [n for n in during if told(n, in_app) or told(n, emails)]
    result.check(
        "in-app fallback during the outage",
        len(in_time) == len(during) > 0,
        f"{len(in_time)} of {len(during)} events during the outage told within "
        f"{IN_APP_BOUND:.0f}s ({sum(1 for n in during if told(n, in_app))} in-app)",
    )
    held = [n for n in published if in_app.get(n)]
    sent_late = [emails[n][0] for n in held if emails.get(n)]
    drained = max(sent_late, default=fault_end) - fault_end
    result.check(
        "held e-mails sent after recovery, none twice",
        len(sent_late) == len(held)
        and drained <= MAIL_OPEN_FOR + 30.0
        and system.sink.duplicates("email") == 0
        and system.sink.duplicates("in_app") == 0,
        f"{len(sent_late)} of {len(held)} held e-mails sent, the last {drained:.1f}s after the "
        f"outage; {system.sink.duplicates('email')} duplicate e-mails, "
        f"{system.sink.duplicates('in_app')} duplicate in-app notifications",
    )
    before = [n for n, at in published.items() if start <= at < fault_at - 30.0]
    smooth = [
        n
        for n in before
        if not in_app.get(n) and emails.get(n) and emails[n][0] - published[n] <= IN_APP_BOUND
    ]
    result.check(
        "blips are invisible (retries)",
        len(smooth) == len(before) and len(blips) > 0,
        f"{len(smooth)} of {len(before)} events before the outage e-mailed at once without "
        f"fallback, through {len(blips)} blips",
    )
    calls = result.dependency_calls = system.network.calls_to("mail", fault_at, fault_end)
    bound = 10 + (math.ceil(OUTAGE / MAIL_OPEN_FOR) + 1) * 2
    result.check(
        "calls to the down mail server bounded by the breaker",
        calls <= bound,
        f"{calls} calls reached the mail server during the outage (bound {bound})",
    )
    after = [at for times in emails.values() for at in times if at >= fault_end]
    result.time_to_recover = min(after) - fault_end if after else None
    return result
