"""schedd-slurm's entry point: install-links makes the names, never over a real program; argv[0] dispatch."""

from __future__ import annotations

import os
import sys

from schedd_slurm import main as entry


def test_install_links_makes_every_name_and_keeps_foreign_files(tmp_path, monkeypatch, capsys):
    prog = tmp_path / "bin" / "schedd-slurm"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(prog), "install-links", str(tmp_path / "links")])
    assert entry.install_links(str(tmp_path / "links")) == 0
    for name in entry.COMMANDS:
        assert os.readlink(tmp_path / "links" / name) == str(prog)
    assert entry.install_links(str(tmp_path / "links")) == 0  # again: the links are ours, remade
    real = tmp_path / "links" / "sbatch"
    real.unlink()
    real.write_text("#!/bin/sh\necho real slurm\n")
    assert entry.install_links(str(tmp_path / "links")) == 1
    assert "left as it is" in capsys.readouterr().err
    assert real.read_text() == "#!/bin/sh\necho real slurm\n"


def test_dispatch_by_name_and_usage(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/x/sacctmgr", "-n", "list", "user"])
    assert entry.main() == 0 and capsys.readouterr().out == ""
    monkeypatch.setattr(sys, "argv", ["/x/schedd-slurm"])
    assert entry.main() == 2 and "install-links" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["/x/schedd-slurm", "scontrol", "show", "hostnames", "a[1-2]"])
    assert entry.main() == 0 and capsys.readouterr().out == "a1\na2\n"


def test_the_commands_are_clients_only():
    """schedd_slurm speaks D-Bus through schedctl's client: it never imports the daemon's insides."""
    import ast
    from pathlib import Path

    import schedd_slurm

    forbidden = ("schedd.core", "schedd.executor", "schedd.api", "schedd.daemon", "schedd.cluster", "dbus_fast.aio")
    for path in Path(schedd_slurm.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
