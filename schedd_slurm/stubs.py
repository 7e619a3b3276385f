"""sacctmgr and sshare: no accounts on a schedd box; they answer empty and exit 0 (Snakemake runs both
when an account is set, and a missing program would raise)."""

from __future__ import annotations


def main(name: str, argv: list[str]) -> int:
    if "-V" in argv or "--version" in argv:
        print("slurm 22.05.8")
    return 0
