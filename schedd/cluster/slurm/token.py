"""HS256 JWTs as Slurm's auth/jwt takes them ({"sun": user, "iat", "exp"}), signed with its key.

schedd holds Slurm's jwt_key (root only), so it can act as each submitting user: the job runs in Slurm
as that user, with that user's limits and accounting, and nobody else's token is ever lent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time


MAX_KEY = 1 << 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: bytes, user: str, now: int, lifetime: int) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps({"iat": now, "exp": now + lifetime, "sun": user}, separators=(",", ":")).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def load_key(path: str) -> bytes:
    """The key, refused unless a regular file only its owner (root) can read or write: whoever reads
    it can act as any user of the Slurm cluster."""
    # O_NONBLOCK: a FIFO put there opens at once (and is refused below) instead of stalling the daemon.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if st.st_size > MAX_KEY:
            raise PermissionError(f"{path} is {st.st_size} bytes: not a JWT key (at most {MAX_KEY})")
        if st.st_uid != 0 or st.st_mode & 0o077:
            raise PermissionError(f"{path} must belong to root with mode 0600 (it lets its reader act as any "
                                  f"Slurm user); it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}")
        data = os.read(fd, MAX_KEY + 1)
    finally:
        os.close(fd)
    if len(data) < 16:
        raise PermissionError(f"{path}: a JWT key of {len(data)} bytes is too short")
    return data


class Tokens:
    """One cached token per user, signed again when less than a minute of it is left."""

    def __init__(self, key: bytes, lifetime: int, clock=time.time) -> None:
        self.key = key
        self.lifetime = lifetime
        self.clock = clock
        self._cache: dict[str, tuple[int, str]] = {}

    def for_user(self, user: str) -> str:
        now = int(self.clock())
        hit = self._cache.get(user)
        if hit is not None and hit[0] - now > 60:
            return hit[1]
        tok = sign(self.key, user, now, self.lifetime)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[user] = (now + self.lifetime, tok)
        return tok
