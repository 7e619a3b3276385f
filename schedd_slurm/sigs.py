"""Signal names as Slurm takes them: TERM, SIGTERM, USR2, 15."""

from __future__ import annotations

import signal

from schedd_slurm.options import SlurmUsage


def signal_number(text: str) -> int:
    t = str(text).strip().upper()
    if t.isdigit():
        n = int(t)
        if 0 < n < signal.NSIG:
            return n
        raise SlurmUsage(f"Invalid signal: {text}")
    name = t if t.startswith("SIG") else "SIG" + t
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SlurmUsage(f"Invalid signal: {text}") from None
