"""Slurm's value formats: --time limits, --mem sizes, dates (--begin, sacct -S/-E), and the time
and date forms squeue, sacct and scontrol print."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from schedd_slurm.options import SlurmUsage

UNLIMITED = 0  # seconds: no limit

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str, option: str = "--time") -> int:
    """A Slurm time limit in seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; UNLIMITED/INFINITE -> 0."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return UNLIMITED
    m = _TIME.match(t)
    if not m:
        raise SlurmUsage(f"Invalid {option} specification")
    days, a, b, c = m.groups()
    a_i, b_i, c_i = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-H[:M[:S]]
        return ((int(days) * 24 + a_i) * 60 + b_i) * 60 + c_i
    if c is not None:  # H:M:S
        return (a_i * 60 + b_i) * 60 + c_i
    if b is not None:  # M:S
        return a_i * 60 + b_i
    return a_i * 60  # M


_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTkmgt]?)[Bb]?$")
_MEM_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_mem(text: str, option: str = "--mem") -> int:
    """A Slurm memory size in bytes: N (MiB) or N with K, M, G, T (any case, optional B)."""
    m = _MEM.match(text.strip())
    if not m:
        raise SlurmUsage(f"Invalid {option} specification")
    size = float(m.group(1)) * _MEM_UNITS[m.group(2).upper()]
    if size >= 2**64:  # more than D-Bus's t can say (and than any node has); float('inf') included
        raise SlurmUsage(f"Invalid {option} specification")
    return int(size)


def format_elapsed(seconds: int, short: bool = True) -> str:
    """squeue's TIME (short: M:SS, H:MM:SS, D-HH:MM:SS) or sacct's Elapsed (always HH:MM:SS)."""
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}-{h:02d}:{m:02d}:{s:02d}"
    if short and not h:
        return f"{m}:{s:02d}"
    if short:
        return f"{h}:{m:02d}:{s:02d}"
    return f"{h:02d}:{m:02d}:{s:02d}"


def format_limit(seconds: int, short: bool = True) -> str:
    return "UNLIMITED" if not seconds else format_elapsed(seconds, short)


def format_date(usec: int) -> str:
    """Slurm's timestamps: 2026-12-03T10:22:28 (local time), `Unknown` for never."""
    if not usec:
        return "Unknown"
    return datetime.fromtimestamp(usec / 1e6).strftime("%Y-%m-%dT%H:%M:%S")


_REL = re.compile(r"^now(?:([+-])(\d+)(seconds|minutes|hours|days|weeks)?)?$")
_DATE_FORMS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H", "%Y-%m-%d", "%m/%d/%y", "%m/%d/%Y",
               "%m/%d/%yT%H:%M", "%m/%d/%yT%H:%M:%S", "%m%d%y")


def parse_date(text: str, option: str, now: float | None = None) -> float:
    """A Slurm date (--begin, sacct -S/-E) as seconds since the epoch: YYYY-MM-DD[THH:MM[:SS]], MM/DD[/YY],
    HH:MM[:SS] (today, or tomorrow if past), now[+-N{seconds,minutes,hours,days,weeks}], today,
    midnight, noon, tomorrow."""
    now = time.time() if now is None else now
    t = text.strip().lower()
    m = _REL.match(t)
    if m:
        sign, n, unit = m.groups()
        if not sign:
            return now
        scale = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}[unit or "seconds"]
        return now + (1 if sign == "+" else -1) * int(n) * scale
    base = datetime.fromtimestamp(now)
    midnight = base.replace(hour=0, minute=0, second=0, microsecond=0)
    words = {"today": midnight, "midnight": midnight + timedelta(days=1),
             "noon": midnight + timedelta(hours=12), "tomorrow": midnight + timedelta(days=1)}
    if t in words:
        return words[t].timestamp()
    for form in ("%H:%M:%S", "%H:%M"):
        try:
            hm = datetime.strptime(t, form)
        except ValueError:
            continue
        at = midnight.replace(hour=hm.hour, minute=hm.minute, second=hm.second)
        if at.timestamp() < now and option == "--begin":
            at += timedelta(days=1)
        return at.timestamp()
    for form in _DATE_FORMS:
        try:
            return datetime.strptime(text.strip(), form).timestamp()
        except ValueError:
            continue
    raise SlurmUsage(f"Invalid time specification (pass: {text})" if option == "--begin"
                     else f"{option}: invalid time format {text!r}")
