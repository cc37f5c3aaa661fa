"""The reference system: a gateway and the services of the failure-mode analysis.

Every service is a small Starlette application built only from resilience-kit's public
API, with its own SQLite database, outbox and relay, talking to the others through the
in-memory bus (events) and through httpx calls guarded by call policies. The drills
(`reference_system.drills`) inject each failure scenario of the analysis and check,
from an independent record of requests and side effects, that the mitigation works.

Run everything from the repository root with ``bash scripts/demo.sh`` (or
``python -m reference_system`` from ``examples/``); see
``docs/reference-system/index.md``.
"""
