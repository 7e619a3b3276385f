"""Builds schedd-gate (schedd/executor/gate.c) next to the Python package when a C compiler exists.

Everything else is declared in pyproject.toml. Without a compiler the install
still works: the daemon then runs gate.pl, the same supervisor in perl (slower).
"""

import os
import shutil
import subprocess
import sysconfig

from setuptools import setup
from setuptools.command.build_py import build_py

SRC = os.path.join("schedd", "executor", "gate.c")
BIN = "schedd-gate"


def compile_gate(dest_dir: str) -> None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        print(f"schedd: no C compiler ({cc}); the daemon will use gate.pl")
        return
    out = os.path.join(dest_dir, BIN)
    os.makedirs(dest_dir, exist_ok=True)
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", out, SRC]
    try:
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"schedd: building {BIN} failed ({e}); the daemon will use gate.pl")


class BuildPy(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            compile_gate(os.path.join("schedd", "executor"))
        else:
            compile_gate(os.path.join(self.build_lib, "schedd", "executor"))


setup(cmdclass={"build_py": BuildPy})
