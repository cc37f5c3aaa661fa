"""Health checks: named probes, HEALTHY / DEGRADED / UNHEALTHY, and an ASGI endpoint.

A `HealthCheck` is a name, a probe (sync or async) and a timeout; `HealthChecks` runs
them concurrently and adds their verdicts up into a `HealthReport`; `HealthEndpoint`
serves ``/health/live`` and ``/health/ready`` to load balancers, orchestrators and
monitors. Ready-made checks watch breakers (`breaker_check`), stores (`store_check`),
the outbox (`outbox_check`), consumer lag (`lag_check`), batch writers
(`batch_writer_check`) and any number
(`threshold_check`).

Examples:
    >>> import anyio
    >>> from resilience_kit import CircuitBreaker
    >>> from resilience_kit.health import HealthChecks, breaker_check, threshold_check
    >>> jobs: list[str] = []
    >>> health = HealthChecks(
    ...     [
    ...         breaker_check(CircuitBreaker("billing")),
    ...         threshold_check("jobs", lambda: len(jobs), degraded_above=100),
    ...     ],
    ...     name="workflow",
    ... )
    >>> anyio.run(health.run).to_dict()["status"]
    'healthy'
"""

from resilience_kit._exports import present
from resilience_kit.health._asgi import HealthEndpoint as HealthEndpoint
from resilience_kit.health._check import CheckReport as CheckReport
from resilience_kit.health._check import CheckResult as CheckResult
from resilience_kit.health._check import HealthCheck as HealthCheck
from resilience_kit.health._check import HealthChecks as HealthChecks
from resilience_kit.health._check import HealthReport as HealthReport
from resilience_kit.health._check import HealthStatus as HealthStatus
from resilience_kit.health._check import Observed as Observed
from resilience_kit.health._checks import batch_writer_check as batch_writer_check
from resilience_kit.health._checks import breaker_check as breaker_check
from resilience_kit.health._checks import lag_check as lag_check
from resilience_kit.health._checks import outbox_check as outbox_check
from resilience_kit.health._checks import store_check as store_check
from resilience_kit.health._checks import threshold_check as threshold_check

__all__ = (
    "CheckReport",
    "CheckResult",
    "HealthCheck",
    "HealthChecks",
    "HealthEndpoint",
    "HealthReport",
    "HealthStatus",
    "Observed",
    "batch_writer_check",
    "breaker_check",
    "lag_check",
    "outbox_check",
    "store_check",
    "threshold_check",
)

present(__name__, globals(), __all__)
