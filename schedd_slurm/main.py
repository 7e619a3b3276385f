"""`schedd-slurm`: one entry point that answers as the Slurm command it is called by (argv[0]), and
`schedd-slurm install-links DIR`, which makes those names as symlinks to itself in DIR."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

COMMANDS = {
    "sbatch": "sbatch", "squeue": "squeue", "scancel": "scancel", "sacct": "sacct", "sinfo": "sinfo",
    "scontrol": "scontrol", "srun": "srun", "sacctmgr": "stubs", "sshare": "stubs",
}
USAGE = ("usage: schedd-slurm install-links DIR   (make sbatch, squeue, ... in DIR)\n"
         "       schedd-slurm COMMAND ARGS...     (run one: " + ", ".join(COMMANDS) + ")")


def entry_point() -> Path:
    """This program's own path (what the links point at): the venv's schedd-slurm script."""
    me = Path(sys.argv[0])
    if me.name == "schedd-slurm" and me.exists():
        return me.absolute()
    found = shutil.which("schedd-slurm") or str(Path(sys.executable).with_name("schedd-slurm"))
    return Path(found).absolute()


def install_links(directory: str, force: bool = False) -> int:
    """Make DIR/sbatch ... -> schedd-slurm. An existing file that is not already our link is left alone."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"schedd-slurm: cannot make {d}: {e.strerror}", file=sys.stderr)
        return 1
    target = entry_point()
    status = 0
    for name in COMMANDS:
        link = d / name
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target)
        elif force:
            link.unlink()
            link.symlink_to(target)
        else:
            print(f"schedd-slurm: {link} exists and is not a link to schedd-slurm; left as it is", file=sys.stderr)
            status = 1
    return status


def dispatch(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"schedd_slurm.{COMMANDS[name]}")
    if COMMANDS[name] == "stubs":
        return module.main(name, argv)
    return module.main(argv)


def main() -> int:
    name = os.path.basename(sys.argv[0])
    if name in COMMANDS:
        return dispatch(name, sys.argv[1:])
    args = sys.argv[1:]
    if args[:1] == ["install-links"] and len(args) in (2, 3):
        return install_links(args[-1], force="--force" in args[1:-1])
    if args and args[0] in COMMANDS:
        return dispatch(args[0], args[1:])
    print(USAGE, file=sys.stderr)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
