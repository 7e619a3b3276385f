"""The slurmrestd client: one aiohttp session, a JWT per user, every answer checked.

Failures split as the federation's do: slurmrestd unreachable, answering 5xx without Slurm's word,
or Slurm saying it cannot reach its controller is PeerError (the peer is down, try again later);
Slurm refusing the request (its `errors` list) is PeerRefused with Slurm's own message.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from schedd.cluster.slurm.token import Tokens
from schedd.cluster.wire import PeerError, PeerRefused
from schedd.errors import AccessDenied, InvalidArgument, InvalidState, NotFound, SchedError, Unsatisfiable

API = "/slurm/v0.0.38"
MAX_ANSWER = 64 << 20  # a queue of ~100k jobs; more is not an answer but an attack
PARSE_OFF_LOOP = 1 << 20  # answers bigger than this are parsed in a thread: a big queue must not stall the loop
# Slurm error numbers (slurm_errno.h) that say the controller cannot be reached: the peer is down.
_UNREACHABLE = set(range(1000, 1100)) | set(range(5000, 5100))
# Slurm's refusals by what they mean to a schedd client (by Slurm's words: its numbers move between versions).
_REFUSAL = (("invalid job id", NotFound), ("node configuration is not available", Unsatisfiable),
            ("more processors than", Unsatisfiable), ("memory specification", Unsatisfiable),
            ("access", AccessDenied), ("permission", AccessDenied), ("already completed", InvalidState),
            ("already done", InvalidState), ("job is", InvalidState))


def _loads(raw: bytes) -> Any:
    """JSON, or None for anything else (nesting too deep for the parser included)."""
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return None


async def _parse(raw: bytes) -> Any:
    return _loads(raw) if len(raw) <= PARSE_OFF_LOOP else await asyncio.to_thread(_loads, raw)


def _errors(body: Any) -> list[dict]:
    errs = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errs, list):
        return []
    return [e for e in errs if isinstance(e, dict)]


def _words(e: dict) -> str:
    parts = [str(e.get(k))[:300] for k in ("description", "error") if isinstance(e.get(k), str) and e.get(k)]
    return ": ".join(dict.fromkeys(parts)) or "error"


class Restd:
    def __init__(self, name: str, url: str, tokens: Tokens) -> None:
        self.name = name
        self.url = url
        self.tokens = tokens
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, user: str, *, body: Any = None, timeout: float = 10.0,
                   done: str = "") -> dict:
        """Slurm's answer (a JSON object with an empty `errors` list). done: a key whose presence says the
        request was carried out even with errors beside it (a held submission comes with "Job is in held
        state" as an error, and its job_id)."""
        assert self._session is not None
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": self.tokens.for_user(user)}
        try:
            # No redirects: the user's token goes to slurmrestd's own address and nowhere else.
            async with self._session.request(method, self.url + API + path, json=body, headers=headers,
                                             allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                buf = bytearray()
                async for chunk in r.content.iter_chunked(1 << 16):
                    buf += chunk
                    if len(buf) > MAX_ANSWER:
                        break
                raw, status, location = bytes(buf), r.status, r.headers.get("Location", "?")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise PeerError(f"Slurm peer {self.name} ({self.url}) unreachable: {str(e) or type(e).__name__}") from None
        if len(raw) > MAX_ANSWER:
            raise PeerError(f"Slurm peer {self.name}: an answer over {MAX_ANSWER >> 20} MiB")
        answer = await _parse(raw)
        if status == 401 or status == 403:
            raise PeerRefused(AccessDenied(f"Slurm peer {self.name} refused {user!r}'s token ({status}): is "
                                           f"jwt_key_file Slurm's jwt_key, and does {user!r} exist there?"))
        if 300 <= status < 400:
            raise PeerError(f"Slurm peer {self.name} answered {status} (a redirect to {location[:200]!r}): schedd "
                            f"sends users' tokens to slurmrestd's own address only; set url to it")
        if not isinstance(answer, dict):
            if status >= 500 or status == 200:
                raise PeerError(f"Slurm peer {self.name} answered {status} without JSON: {raw[:200]!r}")
            raise PeerRefused(SchedError(f"Slurm peer {self.name} answered {status}: {raw[:200]!r}"))
        errs = _errors(answer)
        if (not errs or (done and answer.get(done) is not None)) and status < 400:
            return answer
        for e in errs:
            num = e.get("error_number") if isinstance(e.get("error_number"), int) else e.get("errno")
            if isinstance(num, int) and num in _UNREACHABLE:
                raise PeerError(f"Slurm peer {self.name}: {_words(e)}")
        if not errs:
            if status >= 500:
                raise PeerError(f"Slurm peer {self.name} answered {status}")
            raise PeerRefused(SchedError(f"Slurm peer {self.name} answered {status}"))
        text = "; ".join(_words(e) for e in errs[:3])
        cls = next((c for words, c in _REFUSAL if words in text.lower()), InvalidArgument)
        raise PeerRefused(cls(f"Slurm peer {self.name}: {text}"))
