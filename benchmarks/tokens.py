"""How much does VersionedTokenVerifier cost? Cache hits, cache misses, and PyJWT directly.

For JWTs signed with HS256, RS256, ES256 and EdDSA this measures:

- ``dict.get``: a plain dict lookup of the token, the floor for any cache;
- ``verify`` and ``await averify`` on a cache hit (the verifier holding a revocation,
  so that the hit consults the revocation list);
- ``verify`` on a cache miss (``cache_ttl=0``: parse, key lookup, signature, claims);
- ``jwt.decode`` from PyJWT with the same key, the usual way of checking a JWT.

Plain ``time.perf_counter`` loops, best of several rounds, nanoseconds per call.

    python benchmarks/tokens.py            # about half a minute
    python benchmarks/tokens.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from resilience_kit.security import Keyring, KeyState, TokenIssuer, VersionedTokenVerifier

SECRET = b"benchmark-secret-0123456789abcdef"


def best_ns(fn: Callable[[Any], object], arg: Any, number: int, rounds: int) -> float:
    """The fastest of ``rounds`` loops of ``number`` calls, in ns per call."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(number):
            fn(arg)
        best = min(best, time.perf_counter() - started)
    return best / number * 1e9


def best_ns_async(verifier: VersionedTokenVerifier, token: str, number: int, rounds: int) -> float:
    async def main() -> float:
        averify = verifier.averify
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(number):
                await averify(token)
            best = min(best, time.perf_counter() - started)
        return best / number * 1e9

    return anyio.run(main)


def setup() -> list[tuple[str, str, VersionedTokenVerifier, VersionedTokenVerifier, Any]]:
    """(label, token, caching verifier, non-caching verifier, PyJWT decode)."""
    kinds: list[tuple[str, str, Any]] = [
        ("JWT HS256", "HS256", SECRET),
        ("JWT RS256", "RS256", rsa.generate_private_key(65537, 2048)),
        ("JWT ES256", "ES256", ec.generate_private_key(ec.SECP256R1())),
        ("JWT EdDSA", "EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ]
    cases = []
    for label, algorithm, key in kinds:
        ring = Keyring()
        ring.add("k1", key, algorithm=algorithm, state=KeyState.ACTIVE)
        issuer = TokenIssuer(ring, lifetime=3600.0)
        token = issuer.issue("ada", claims={"roles": ["reader", "writer"], "org": "acme"})
        cached = VersionedTokenVerifier(ring)
        cached.revoke("another-sessions-jti")  # so that hits consult a revocation list
        uncached = VersionedTokenVerifier(ring, cache_ttl=0)
        cached.verify(token)
        public = key if isinstance(key, bytes) else key.public_key()

        def decode(token: str, public: Any = public, algorithm: str = algorithm) -> object:
            return jwt.decode(token, public, algorithms=[algorithm])

        decode(token)
        cases.append((label, token, cached, uncached, decode))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke run")
    args = parser.parse_args()
    hits, misses, rounds = (2_000, 200, 2) if args.quick else (200_000, 3_000, 7)

    print(f"Python {platform.python_version()} on {platform.machine()}, PyJWT {jwt.__version__}")
    print("ns per call, best of", rounds, "rounds\n")
    header = (
        "| token | dict.get | hit: verify | hit: await averify | miss: verify | PyJWT jwt.decode |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    overheads = []
    for label, token, cached, uncached, decode in setup():
        table = {token: object()}
        lookup = best_ns(table.get, token, hits, rounds)
        hit = best_ns(cached.verify, token, hits, rounds)
        hit_async = best_ns_async(cached, token, hits, rounds)
        miss = best_ns(uncached.verify, token, misses, rounds)
        direct = best_ns(decode, token, misses, rounds)
        overheads.append(hit - lookup)
        print(
            f"| {label} | {lookup:,.0f} | {hit:,.0f} | {hit_async:,.0f} | {miss:,.0f} "
            f"| {direct:,.0f} |"
        )
    print(
        f"\ncache hit (verify) above a dict lookup: {min(overheads):,.0f}-"
        f"{max(overheads):,.0f} ns (target: under 1,000 ns)"
    )


if __name__ == "__main__":
    sys.exit(main())
