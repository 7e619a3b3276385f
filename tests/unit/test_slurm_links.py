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
