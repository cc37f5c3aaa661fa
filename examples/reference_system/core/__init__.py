"""The platform every service and drill stands on.

- `system.System`: one virtual clock, one bus, one SQLite file per service, the
  in-process network, and every service's relay and consumers in one task group.
- `network.Network`: services reachable by name through httpx, with injectable faults.
- `service.Service`: the base of a service (health routes, metrics, outbox, relay,
  consumers).
- `records`: the independent record a drill is judged on (`RequestLog`,
  `SideEffectSink`) and the `Workload` client that fills the request log.
- `drill`: the drill registry, `DrillResult` and the checks.
- `runner`: the command line.
"""
