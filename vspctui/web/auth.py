"""Who a browser user is (docs/vspc-web.md, "Authentication").

- `TokenAuth`: on loopback, a secret token like Jupyter's; the user is whoever runs
  vspc-web, so its connections to vspcd carry no `as_user`.
- `PasswordFileAuth`: `user:hash` lines, argon2 (`$argon2id$...`, argon2-cffi) or
  bcrypt (`$2b$...`); the file is read again when it changes.
- `PamAuth`: the `vspc-web` PAM service, through python-pam when installed.
- `ProxyHeaderAuth`: a user name from a trusted reverse proxy's header, honoured only
  from allow-listed proxy addresses.
- `LoginLimiter`: failed logins per client address, a token bucket.

Every comparison of a secret is constant-time; an unknown user costs a hash check too,
so timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "AuthError",
    "LoginLimiter",
    "PamAuth",
    "PasswordAuth",
    "PasswordFileAuth",
    "ProxyHeaderAuth",
    "TokenAuth",
    "hash_password",
    "valid_user_name",
]


class AuthError(Exception):
    """The configured method cannot work (a missing module, an unreadable file)."""


def valid_user_name(name: str) -> bool:
    """A plausible unix user name (what vspcd's NSS lookup will be asked)."""
    return (
        0 < len(name) <= 64
        and name[0] not in "-."
        and all(c.isalnum() or c in "._-@" for c in name)
    )


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """The loopback token."""

    token: str

    def check(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())


class PasswordAuth(Protocol):
    async def verify(self, user: str, password: str) -> bool: ...


def _verifier(hashed: str) -> Callable[[str], bool]:
    if hashed.startswith("$argon2"):
        try:
            from argon2 import PasswordHasher
            from argon2.exceptions import Argon2Error, InvalidHashError
        except ImportError as exc:
            raise AuthError("argon2 hashes need argon2-cffi (pip install 'vspc[web]')") from exc
        hasher = PasswordHasher()

        def argon(password: str) -> bool:
            try:
                return bool(hasher.verify(hashed, password))
            except (Argon2Error, InvalidHashError):
                return False

        return argon
    if hashed.startswith(("$2b$", "$2a$", "$2y$")):
        try:
            import bcrypt
        except ImportError as exc:
            raise AuthError("bcrypt hashes need bcrypt (pip install 'vspc[web]')") from exc

        def bcrypt_check(password: str) -> bool:
            try:
                return bool(bcrypt.checkpw(password.encode(), hashed.encode()))
            except ValueError:
                return False

        return bcrypt_check
    raise AuthError("not an argon2 or bcrypt hash")


def hash_password(password: str) -> str:
    """An argon2id hash for a password file line (`vspc-web --hash-password`)."""
    from argon2 import PasswordHasher

    hashed: str = PasswordHasher().hash(password)
    return hashed


class PasswordFileAuth:
    """`user:hash` lines (`#` comments); re-read when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, Callable[[str], bool]] = {}
        self._dummy = _verifier(hash_password(os.urandom(16).hex()))
        self.load()

    def load(self) -> None:
        """Read the file if it changed.

        Raises:
            AuthError: unreadable, or a malformed line (the message names it).
        """
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"{self.path}: cannot read: {exc}") from None
        users: dict[str, Callable[[str], bool]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not valid_user_name(user):
                raise AuthError(f"{self.path}:{number}: expected user:hash")
            try:
                users[user] = _verifier(hashed)
            except AuthError as exc:
                raise AuthError(f"{self.path}:{number}: {exc}") from None
        self._users, self._stamp = users, stamp

    async def verify(self, user: str, password: str) -> bool:
        self.load()
        check = self._users.get(user)
        # Hashing is slow on purpose: off the event loop.  Unknown users cost the same.
        ok = await asyncio.to_thread(check or self._dummy, password)
        return ok and check is not None


class PamAuth:
    """PAM's `service` (default `vspc-web`, /etc/pam.d/vspc-web), via python-pam."""

    def __init__(self, service: str = "vspc-web") -> None:
        try:
            import pam
        except ImportError as exc:
            raise AuthError("--auth pam needs python-pam (pip install python-pam)") from exc
        self._pam: Any = pam
        self.service = service

    async def verify(self, user: str, password: str) -> bool:
        def check() -> bool:
            return bool(self._pam.pam().authenticate(user, password, service=self.service))

        return await asyncio.to_thread(check)


@dataclass(frozen=True, slots=True)
class ProxyHeaderAuth:
    """The user a trusted reverse proxy names in `header`."""

    header: str
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def build(cls, header: str, networks: Iterable[str]) -> ProxyHeaderAuth:
        """Raises: ValueError: a network that does not parse, or none at all."""
        parsed = tuple(ipaddress.ip_network(text, strict=False) for text in networks)
        if not parsed:
            raise ValueError("--auth proxy-header needs at least one --trusted-proxy")
        return cls(header, parsed)

    def user(self, remote: str | None, headers: Any) -> str | None:
        """The header's user name, if `remote` is a trusted proxy and the name is
        plausible; else None."""
        if remote is None:
            return None
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return None
        if not any(address in network for network in self.trusted):
            return None
        values = headers.getall(self.header, [])
        if len(values) != 1 or not valid_user_name(values[0]):
            return None  # absent, ambiguous (repeated) or not a user name
        name: str = values[0]
        return name


@dataclass(slots=True)
class LoginLimiter:
    """Failed logins per address: `burst` at once, then one per `interval` seconds."""

    burst: int = 5
    interval: float = 12.0
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def _tokens(self, key: str) -> float:
        now = self.clock()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - stamp) / self.interval)

    def allowed(self, key: str) -> bool:
        return self._tokens(key) >= 1.0

    def failed(self, key: str) -> None:
        if len(self._buckets) > 100_000:  # many addresses: forget the full buckets
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        self._buckets[key] = (max(0.0, self._tokens(key) - 1.0), self.clock())
