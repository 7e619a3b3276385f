"""Slurm's filename patterns (-o/-e, srun --output): %j %J %A %a %x %u %N %n %t %s %%, with widths (%4a)."""

from __future__ import annotations

import re

_PAT = re.compile(r"%(\d*)([%jJAaxuNntsb])")


def expand(pattern: str, *, job_id: int, array_job_id: int = 0, task_id: int | None = None, name: str = "",
           user: str = "", node: str = "", rank: int | None = None, step: str = "batch") -> str:
    """Expand the pattern; %a is 4294967294 outside an array as in Slurm, %A is the job id."""
    def one(m: re.Match) -> str:
        width, code = m.group(1), m.group(2)
        if code == "%":
            return "%" + width if width else "%"
        v = {"j": job_id, "J": f"{job_id}.{step}" if step else job_id, "A": array_job_id or job_id,
             "a": task_id if task_id is not None else 4294967294, "x": name, "u": user, "N": node, "n": 0,
             "t": rank if rank is not None else 0, "s": step, "b": (task_id or 0) % 10}[code]
        if width and isinstance(v, int):
            return str(v).zfill(int(width))
        return str(v)
    return _PAT.sub(one, pattern)
