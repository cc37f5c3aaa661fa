"""JWKSKeySource: verification keys from a JWKS endpoint, fetched without blocking the loop.

An attacker chooses the ``kid`` of the tokens they send, so an unknown ``kid`` must not
turn into a fetch per token. Fetches are single-flight (concurrent callers share one),
at most one per ``refetch_cooldown`` (whatever triggers it), and a ``kid`` that a fresh
key set did not contain is remembered as missing for ``negative_ttl``. A failed or empty
refresh keeps the last known good keys (PyJWT issue #1162): failing closed means
rejecting tokens no verified key covers, not dropping the keys we have. Inside
``async with source:`` a stale key set is refreshed in the background while known keys
keep verifying (stale-while-revalidate).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from resilience_kit import _telemetry
from resilience_kit._checks import check_int, check_positive
from resilience_kit.clock import Clock, resolve_clock
from resilience_kit.errors import ConfigurationError
from resilience_kit.policies._timeout import Timeout
from resilience_kit.security import _algorithms, _jwt
from resilience_kit.security._errors import ValidatorUnavailableError
from resilience_kit.security._keyring import KeyState, KeyVersion

if TYPE_CHECKING:
    import urllib.request

    import anyio.abc

JWKSDocument = Mapping[str, Any] | bytes | str
JWKSFetch = Callable[[], Awaitable[JWKSDocument]]

_RETIRED = KeyState.RETIRED
_MAX_REMEMBERED_REMOVALS = 1_000


class JWKSKeySource:
    """Keys from a JWKS endpoint (RFC 7517), for a `VersionedTokenVerifier`.

    Each key is pinned to its JWK's ``alg`` (or the one its type implies: RSA ->
    RS256, P-256 -> ES256, Ed25519 -> EdDSA). Symmetric (``oct``) keys, encryption keys
    and keys without a ``kid`` are ignored. A ``kid`` that disappears from the set counts
    as retired. The verifier fetches on its first token, when a token names an unknown
    ``kid``, and when the set is older than ``refresh_interval`` — never more often than
    once per ``refetch_cooldown``; `refresh` fetches at once (say, at startup).

    Inside ``async with source:`` the source owns a task group: when the set is stale,
    the token that notices starts a refresh there and is verified at once with the key
    it names, if known (stale-while-revalidate); a hung endpoint then delays only
    tokens whose ``kid`` nobody knows yet. Outside, that token waits for the refresh
    (at most ``fetch_timeout``); other tokens meanwhile use the keys at hand.

    Fetching goes through the ``fetch`` callable (``async () -> dict | bytes | str``) or,
    given a ``url``, an HTTP GET in a worker thread (`anyio.to_thread.run_sync`), so the
    event loop never blocks; either way under a `Timeout` of ``fetch_timeout``.

    Args:
        url: the JWKS endpoint; ``https`` (``http`` only to a loopback address).
        fetch: an async callable returning the JWKS document, instead of ``url``.
        refresh_interval: seconds after which the key set is refreshed on next use.
        refetch_cooldown: the least seconds between two fetches.
        negative_ttl: seconds a ``kid`` missing from a fresh key set is rejected without
            another fetch.
        fetch_timeout: seconds a fetch may take.
        max_document_size: bytes; a larger document is a failed fetch.
        max_unknown_kids: how many missing ``kid`` values are remembered (each at most
            256 characters: a token naming a longer one is malformed).
        algorithms: algorithms to accept; default: every asymmetric one supported.
        clock: the clock for the intervals and the timeout.
        name: a name for logs.

    Attributes:
        fetches: how many fetches were started.
        last_error: the exception of the last fetch if it failed, else ``None``.

    Raises:
        ConfigurationError: for a bad parameter, or when PyJWT is not installed.

    Examples:
        >>> import anyio
        >>> async def fetch() -> dict:
        ...     return {"keys": []}  # a real endpoint returns public keys
        >>> source = JWKSKeySource(fetch=fetch)
        >>> anyio.run(source.refresh)  # an empty set is a failed refresh
        False
        >>> source.fetches, type(source.last_error).__name__
        (1, 'ValueError')
    """

    __slots__ = (
        "_algorithms",
        "_attempted_at",
        "_background",
        "_clock",
        "_cooldown",
        "_documents",
        "_fetch",
        "_fetched_at",
        "_inflight",
        "_keys",
        "_loads",
        "_max_missing",
        "_max_size",
        "_missing",
        "_negative_ttl",
        "_refresh_interval",
        "_removed",
        "_task_group",
        "_timeout",
        "fetches",
        "generation",
        "last_error",
        "name",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        fetch: JWKSFetch | None = None,
        refresh_interval: float = 300.0,
        refetch_cooldown: float = 30.0,
        negative_ttl: float = 60.0,
        fetch_timeout: float = 5.0,
        max_document_size: int = 512 * 1024,
        max_unknown_kids: int = 1_000,
        algorithms: Collection[str] | None = None,
        clock: Clock | None = None,
        name: str = "jwks",
    ) -> None:
        if (url is None) == (fetch is None):
            raise ConfigurationError("url", "give either a url or a fetch callable")
        if not _algorithms.pyjwt_available():
            raise ConfigurationError("url", f"JWKS keys need PyJWT; {_algorithms.INSTALL_HINT}")
        if fetch is not None and not callable(fetch):
            raise ConfigurationError("fetch", f"must be an async callable, got {fetch!r}")
        check_positive("refresh_interval", refresh_interval)
        check_positive("refetch_cooldown", refetch_cooldown, allow_zero=True)
        check_positive("negative_ttl", negative_ttl, allow_zero=True)
        check_positive("fetch_timeout", fetch_timeout)
        check_int("max_document_size", max_document_size, minimum=2)
        check_int("max_unknown_kids", max_unknown_kids, minimum=0)
        if algorithms is None:
            accepted = _algorithms.ASYMMETRIC
        elif isinstance(algorithms, str):
            raise ConfigurationError("algorithms", "must be a collection, e.g. ('RS256',)")
        else:
            accepted = frozenset(_algorithms.check_algorithm(a, "algorithms") for a in algorithms)
        if url is not None:
            _check_url(url)
            fetch = functools.partial(_http_get, url, fetch_timeout, max_document_size)
        assert fetch is not None  # noqa: S101  (for the type checker)
        self.name = name
        self._fetch = fetch
        self._refresh_interval = float(refresh_interval)
        self._cooldown = float(refetch_cooldown)
        self._negative_ttl = float(negative_ttl)
        self._max_size = max_document_size
        self._max_missing = max_unknown_kids
        self._algorithms = accepted
        self._clock = clock
        self._timeout = Timeout(fetch_timeout, name=f"{name}.fetch", clock=clock)
        self._keys: dict[str, KeyVersion] = {}
        self._documents: dict[str, str] = {}
        self._removed: dict[str, KeyVersion] = {}
        self._missing: dict[str, float] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: anyio.Event | None = None
        self._background: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._loads = 0
        self.fetches = 0
        self.generation = 0
        self.last_error: Exception | None = None

    def __repr__(self) -> str:
        return f"JWKSKeySource({self.name!r}, keys={sorted(self._keys)})"

    @property
    def versions(self) -> tuple[str, ...]:
        """The ``kid`` values of the keys in use, sorted."""
        return tuple(sorted(self._keys))

    # -- KeySource --------------------------------------------------------------------------

    def find(self, version: str) -> KeyVersion | None:
        """The key ``version`` from the last good key set (retired if it has left it)."""
        return self._keys.get(version) or self._removed.get(version)

    def wants_fetch(self, version: str, found: KeyVersion | None) -> bool:
        """Tell whether awaiting `fetch` could change the answer `find` gave."""
        now = self._now()
        if found is not None and found.state is not _RETIRED:
            stale = self._fetched_at is None or now - self._fetched_at >= self._refresh_interval
            return stale and self._inflight is None and self._may_fetch(now)
        until = self._missing.get(version)
        if until is not None and now < until:
            return False
        return self._inflight is not None or self._may_fetch(now) or self.last_error is not None

    async def fetch(self, version: str) -> KeyVersion | None:
        """Find ``version``, refreshing the key set first if it is allowed to.

        Raises:
            ValidatorUnavailableError: (reason ``"keys_unavailable"``) when ``version``
                is unknown and the last fetch failed.
        """
        loads_before = self._loads
        known = self.find(version)
        usable = known is not None and known.state is not _RETIRED
        if self._inflight is not None:
            if usable:
                return known  # do not make a caller with a good key wait for a refresh
            await self._inflight.wait()
        elif self._may_fetch(self._now()):
            group = self._task_group
            if usable and group is not None:
                event = self._background = self._begin()
                group.start_soon(self._run, event)
                return known
            await self._refresh()
        key = self.find(version)
        if key is not None and key.state is not _RETIRED:
            return key
        if self._loads > loads_before:
            self._remember_missing(version)  # a fresh key set confirms it is absent
        elif key is None and self.last_error is not None:
            raise ValidatorUnavailableError(
                f"key {version[:64]!r} is not among the {len(self._keys)} last known good "
                f"keys and the JWKS endpoint is unavailable ({type(self.last_error).__name__})",
                reason="keys_unavailable",
            )
        return key

    # -- fetching ---------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch the key set now (ignoring the cooldown); tell whether it succeeded.

        On failure the last good keys stay in use and `last_error` says why.
        """
        if self._inflight is not None:
            await self._inflight.wait()
        else:
            await self._refresh()
        return self.last_error is None

    async def __aenter__(self) -> JWKSKeySource:
        """Refresh a stale key set in the background while known keys keep verifying.

        Examples:
            >>> import anyio
            >>> async def fetch() -> dict:
            ...     return {"keys": []}
            >>> async def main() -> None:
            ...     async with JWKSKeySource(fetch=fetch) as source:
            ...         pass  # serve requests here
            >>> anyio.run(main)
        """
        if self._task_group is not None:
            raise RuntimeError(f"JWKS source {self.name!r} is already running a task group")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._task_group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel a background refresh still running, and wait for it to end."""
        group, self._task_group = self._task_group, None
        assert group is not None  # noqa: S101  (entered before)
        group.cancel_scope.cancel()
        try:
            return await group.__aexit__(exc_type, exc, tb)
        finally:
            event = self._background
            # A task cancelled before it ever ran never settles its refresh; asyncio
            # allows that, though anyio's backends start tasks first today.
            if event is not None:  # pragma: no cover
                self._settle(event)

    def _begin(self) -> anyio.Event:
        event = anyio.Event()
        self._inflight = event
        self._attempted_at = self._now()
        self.fetches += 1
        return event

    def _settle(self, event: anyio.Event) -> None:
        if self._inflight is event:
            self._inflight = None
        if self._background is event:
            self._background = None
        event.set()

    async def _refresh(self) -> None:
        await self._run(self._begin())

    async def _run(self, event: anyio.Event) -> None:
        try:
            document = await self._timeout.acall(self._fetch)
            keys, documents = self._parse(document)
        except Exception as exc:  # noqa: BLE001  (any failure keeps the last good keys)
            self.last_error = exc
            _telemetry.logger.warning(
                "%s: key refresh failed (%s: %s); keeping %d last known good keys",
                self.name,
                type(exc).__name__,
                exc,
                len(self._keys),
            )
        else:
            self._install(keys, documents)
            self.last_error = None
        finally:
            self._settle(event)

    def _parse(self, document: object) -> tuple[dict[str, KeyVersion], dict[str, str]]:
        from jwt import PyJWK  # noqa: PLC0415  (optional dependency, checked in __init__)

        if isinstance(document, (bytes, bytearray, str)):
            if len(document) > self._max_size:
                raise ValueError(f"the JWKS document is over {self._max_size} bytes")
            document = json.loads(document)
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise TypeError("not a JWKS document (no 'keys' list)")
        keys: dict[str, KeyVersion] = {}
        documents: dict[str, str] = {}
        seen: set[str] = set()
        for jwk in document["keys"]:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
                continue
            if len(kid) > _jwt.MAX_KID_LENGTH:  # no token could name it
                _telemetry.logger.warning(
                    "%s: ignoring a key with a %d-character kid", self.name, len(kid)
                )
                continue
            if kid in seen:  # two keys under one kid: trust neither
                keys.pop(kid, None)
                continue
            seen.add(kid)
            if jwk.get("kty") == "oct":
                _telemetry.logger.warning("%s: ignoring symmetric key %r in a JWKS", self.name, kid)
                continue
            try:
                parsed = PyJWK(dict(jwk))
                algorithm = parsed.algorithm_name
                if algorithm not in self._algorithms:
                    continue
                verifying, _ = _algorithms.prepare_key(algorithm, parsed.key)
            except Exception as exc:  # noqa: BLE001  (one bad key must not spoil the set)
                _telemetry.logger.warning("%s: ignoring key %r: %s", self.name, kid, exc)
                continue
            keys[kid] = KeyVersion(kid, algorithm, KeyState.ACCEPTED, None, verifying, None)
            documents[kid] = json.dumps(jwk, sort_keys=True)
        if not keys:
            raise ValueError("the JWKS document holds no usable signing key")
        return keys, documents

    def _install(self, keys: dict[str, KeyVersion], documents: dict[str, str]) -> None:
        changed = documents != self._documents
        removed = dict(self._removed)
        for kid, key in self._keys.items():
            if kid not in keys:
                removed[kid] = dataclasses.replace(key, state=_RETIRED)
        for kid in keys:
            removed.pop(kid, None)
            self._missing.pop(kid, None)
        while len(removed) > _MAX_REMEMBERED_REMOVALS:
            del removed[next(iter(removed))]
        self._keys, self._documents, self._removed = keys, documents, removed
        self._fetched_at = self._now()
        self._loads += 1
        if changed:
            self.generation += 1

    # -- bookkeeping ------------------------------------------------------------------------

    def _now(self) -> float:
        return resolve_clock(self._clock).monotonic()

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._cooldown

    def _remember_missing(self, version: str) -> None:
        if self._max_missing == 0 or self._negative_ttl == 0:
            return
        missing = self._missing
        missing.pop(version, None)
        while len(missing) >= self._max_missing:
            del missing[next(iter(missing))]  # the oldest
        missing[version] = self._now() + self._negative_ttl


def _check_url(url: object) -> None:
    if not isinstance(url, str):
        raise ConfigurationError("url", f"must be a string, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise ConfigurationError("url", f"must be an https URL (http only to loopback), got {url!r}")


def _is_loopback(host: str) -> bool:
    import ipaddress  # noqa: PLC0415  (only for http URLs)

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """An opener that follows redirects, but never from https to anything else."""
    # urllib.request (and http.client, email...) load only when a URL is fetched.
    import urllib.request  # noqa: PLC0415

    class NoDowngrade(urllib.request.HTTPRedirectHandler):
        def redirect_request(  # noqa: PLR0917  (urllib's signature)
            self,
            req: urllib.request.Request,
            fp: Any,
            code: int,
            msg: str,
            headers: Any,
            newurl: str,
        ) -> urllib.request.Request | None:
            if req.full_url.startswith("https:") and not newurl.startswith("https:"):
                raise ValueError(f"refusing a redirect from https to {newurl!r}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(NoDowngrade)


def _get(url: str, socket_timeout: float, limit: int) -> bytes:
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(  # noqa: S310  (the scheme was checked in __init__)
        url, headers={"Accept": "application/jwk-set+json, application/json"}
    )
    with _opener().open(request, timeout=socket_timeout) as response:
        body: bytes = response.read(limit + 1)
    if len(body) > limit:
        raise ValueError(f"the JWKS document is over {limit} bytes")
    return body


async def _http_get(url: str, socket_timeout: float, limit: int) -> bytes:
    """GET ``url`` in a worker thread, so the event loop never blocks on the network."""
    return await anyio.to_thread.run_sync(_get, url, socket_timeout, limit, abandon_on_cancel=True)
