from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest

from resilience_kit import ConfigurationError
from resilience_kit.health import CheckResult, HealthCheck, HealthChecks, HealthEndpoint
from resilience_kit.testing import VirtualClock

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]


class Response:
    def __init__(self, messages: list[Message]) -> None:
        start, *bodies = messages
        assert start["type"] == "http.response.start"
        self.status: int = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in bodies)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any, path: str, *, method: str = "GET", root_path: str = "", kind: str = "http"
) -> list[Message]:
    scope = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def get(app: Any, path: str, **kwargs: Any) -> Response:
    return Response(await call(app, path, **kwargs))


def checks(*probes: HealthCheck) -> HealthChecks:
    return HealthChecks(probes, clock=VirtualClock())


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


async def test_live_answers_200_without_running_any_check() -> None:
    ran = False

    def probe() -> bool:
        nonlocal ran
        ran = True
        return False

    response = await get(HealthEndpoint(checks(HealthCheck("db", probe))), "/health/live")
    assert response.status == 200
    assert response.json() == {"status": "alive"}
    assert not ran


@pytest.mark.parametrize(
    ("verdict", "critical", "code", "status"),
    [
        (CheckResult.healthy(), True, 200, "healthy"),
        (CheckResult.degraded("slow"), True, 200, "degraded"),
        (CheckResult.unhealthy("down"), False, 200, "degraded"),
        (CheckResult.unhealthy("down"), True, 503, "unhealthy"),
    ],
)
async def test_ready_answers_200_unless_unhealthy_with_the_report_as_json(
    verdict: CheckResult, critical: bool, code: int, status: str
) -> None:
    endpoint = HealthEndpoint(checks(HealthCheck("db", lambda: verdict, critical=critical)))
    response = await get(endpoint, "/health/ready")
    assert response.status == code
    body = response.json()
    assert body["status"] == status
    assert body["checks"]["db"]["status"] == verdict.status.value
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.body))


async def test_head_answers_like_get_without_a_body() -> None:
    endpoint = HealthEndpoint(checks(HealthCheck("db", lambda: False)))
    got = await get(endpoint, "/health/ready")
    head = await get(endpoint, "/health/ready", method="HEAD")
    assert head.status == got.status == 503
    assert head.body == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    live = await get(endpoint, "/health/live", method="HEAD")
    assert (live.status, live.body) == (200, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_get_405_with_allow(method: str) -> None:
    response = await get(HealthEndpoint(checks()), "/health/ready", method=method)
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_mounted_alone_it_answers_404_elsewhere() -> None:
    response = await get(HealthEndpoint(checks()), "/orders")
    assert response.status == 404


async def test_as_middleware_it_passes_every_other_request_to_the_app() -> None:
    endpoint = HealthEndpoint(checks(), inner)
    response = await get(endpoint, "/orders")
    assert (response.status, response.body) == (201, b"inner")
    assert (await get(endpoint, "/health/live")).status == 200


async def test_as_middleware_it_passes_websockets_to_the_app() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await call(HealthEndpoint(checks(), app), "/ws", kind="websocket")
    assert seen == ["websocket"]


async def test_mounted_alone_it_closes_websockets() -> None:
    sent = await call(HealthEndpoint(checks()), "/ws", kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1000}]


async def test_paths_are_matched_after_the_root_path_and_the_prefix_is_configurable() -> None:
    endpoint = HealthEndpoint(checks(), prefix="")
    assert (await get(endpoint, "/live")).status == 200
    mounted = await get(endpoint, "/ops/ready", root_path="/ops")
    assert mounted.status == 200
    assert (await get(endpoint, "/health/live")).status == 404
    custom = HealthEndpoint(checks(), prefix="/_internal/health")
    assert (await get(custom, "/_internal/health/ready")).status == 200


async def test_once_shutting_down_both_paths_answer_503_and_no_check_runs() -> None:
    ran = False

    def probe() -> bool:
        nonlocal ran
        ran = True
        return True

    endpoint = HealthEndpoint(checks(HealthCheck("db", probe)))
    endpoint.shut_down()
    live = await get(endpoint, "/health/live")
    ready = await get(endpoint, "/health/ready")
    assert (live.status, live.json()) == (503, {"status": "shutting_down"})
    assert (ready.status, ready.json()) == (503, {"status": "unhealthy", "detail": "shutting down"})
    assert not ran


async def lifespan(app: Any) -> list[Message]:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await anyio.sleep_forever()  # pragma: no cover - the app returns after shutdown
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


async def test_mounted_alone_it_completes_the_lifespan_and_drains_on_shutdown() -> None:
    endpoint = HealthEndpoint(checks())
    sent = await lifespan(endpoint)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert endpoint.shutting_down


async def test_as_middleware_the_app_runs_its_lifespan_and_the_shutdown_is_noticed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    endpoint = HealthEndpoint(checks(), app)
    assert not endpoint.shutting_down
    sent = await lifespan(endpoint)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert endpoint.shutting_down


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"checks": object()}, "checks"),
        ({"app": "app"}, "app"),
        ({"prefix": "health"}, "prefix"),
        ({"prefix": "/health/"}, "prefix"),
        ({"prefix": None}, "prefix"),
    ],
)
def test_a_misconfigured_endpoint_fails_at_construction_naming_the_parameter(
    kwargs: dict[str, object], parameter: str
) -> None:
    arguments: dict[str, object] = {"checks": checks(), **kwargs}
    with pytest.raises(ConfigurationError) as caught:
        HealthEndpoint(**arguments)  # type: ignore[arg-type]
    assert caught.value.parameter == parameter


def test_the_repr_names_the_checks_and_the_prefix() -> None:
    endpoint = HealthEndpoint(HealthChecks(name="billing"))
    assert repr(endpoint) == "HealthEndpoint(HealthChecks('billing', checks=[]), prefix='/health')"
