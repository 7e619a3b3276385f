"""Generate schedctl(1), schedd(8) and schedd.toml(5) from the code, so they cannot drift.

schedctl(1) and schedd(8) are rendered from the argparse parsers the commands use (every
command, option and help text); schedd.toml(5) takes its keys from schedd/config.py (the keys
the loader accepts, asked of it) and their defaults and meaning from the commented example
packaging/schedd.toml.example, failing when a key has no entry there. Only the prose around
them (exit codes, signals, files) is written here.

Usage: python3 packaging/manpages.py OUTDIR   (with schedd and schedctl importable)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "schedd.toml.example"


def esc(text: str) -> str:
    """Roff-safe text: backslashes, hyphens of options, and a line never starting with . or '."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def header(name: str, section: int, title: str) -> list[str]:
    from schedd import __version__

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    day = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else datetime.datetime.now(
        datetime.timezone.utc)
    return [f'.TH {esc(name.upper())} {section} "{day:%Y-%m-%d}" "schedd {__version__}" "{title}"']


def section(name: str) -> list[str]:
    return [f".SH {name}"]


def para(text: str) -> list[str]:
    return [".PP", esc(text)]


def item(term: str, text: str) -> list[str]:
    return [".TP", term, esc(text)] if text else [".TP", term, ""]


# -- argparse -> roff ----------------------------------------------------------


def _metavar(a: argparse.Action) -> str:
    if a.nargs == 0:
        return ""
    mv = a.metavar or (a.dest.upper() if a.option_strings else a.dest)
    if a.choices and not a.metavar:
        mv = "{" + ",".join(map(str, a.choices)) + "}"
    if a.nargs == "?":
        return f" [{mv}]"
    if a.nargs in ("+", "*"):
        return f" {mv}..."
    return f" {mv}"


def option_term(a: argparse.Action) -> str:
    flags = ", ".join(bold(o) for o in a.option_strings)
    mv = _metavar(a)
    return flags + (f"\\fI{esc(mv)}\\fR" if mv else "")


def visible(actions: list[argparse.Action], skip: set[str] = frozenset()) -> list[argparse.Action]:
    """Options a person sees in --help (not -h, not the SUPPRESSed ones, not those in `skip`)."""
    return [a for a in actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction) and not set(a.option_strings) & skip]


def _help(a: argparse.Action) -> str:
    text = a.help or ""
    return text % {"default": a.default, "prog": ""} if "%(" in text else text


def subcommands(p: argparse.ArgumentParser) -> list[tuple[str, list[str], str, argparse.ArgumentParser]]:
    """(name, aliases, help, parser) per subcommand, in --help's order."""
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in a._choices_actions}
            seen: dict[int, tuple[str, list[str], str, argparse.ArgumentParser]] = {}
            for name, sp in a.choices.items():
                if id(sp) in seen:
                    seen[id(sp)][1].append(name)
                else:
                    seen[id(sp)] = (name, [], helps.get(name, ""), sp)
            return list(seen.values())
    return []


# -- schedctl(1) ---------------------------------------------------------------

EXIT_CODES = [("0", "success; for wait, every job completed"),
              ("1", "the daemon refused the request or cannot be reached; for wait, a job did not complete "
                    "(cancelled, or several jobs and one did not complete)"),
              ("1-255", "wait with one job that FAILED with an exit status: that status, so that "
                        "`schedctl wait ID` exits as the job did"),
              ("2", "usage error: a bad option, size, duration, id or job file (checked before any call)"),
              ("124", "wait --timeout ran out, as timeout(1)"),
              ("130", "interrupted (Ctrl-C)")]

EXAMPLES = [("Run a command with 4 CPUs and 8 GiB for at most two hours:",
             "schedctl submit --cpus 4 --mem 8G --time 2h \\-\\- ./train.sh"),
            ("List the queue, then every property of job 12:", "schedctl queue\nschedctl show 12"),
            ("One property, value only (for scripts):", "schedctl show \\-p State \\-\\-value 12"),
            ("Wait for jobs 12 and 13 and exit with their status:", "schedctl wait 12 13"),
            ("Follow a job's output:", "schedctl logs \\-f 12"),
            ("Take node b out for maintenance (its running jobs finish), then back:",
             "schedctl drain b \\-\\-reason 'kernel update'\nschedctl nodes\nschedctl node resume b"),
            ("Forget node c, which is gone for good (it must be down):", "schedctl node remove c"),
            ("Talk to your own per-user daemon instead of the system one:", "schedctl \\-\\-user queue")]


def schedctl_page() -> str:
    from schedctl import cli

    p = cli.parser()
    glob = visible(cli.global_options()._actions)
    glob_flags = {o for a in glob for o in a.option_strings} | {"--bus-address"}
    out = header("schedctl", 1, "schedd manual")
    out += section("NAME") + [esc("schedctl - control the schedd job scheduler")]
    out += section("SYNOPSIS") + [f"{bold('schedctl')} [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]"]
    out += section("DESCRIPTION") + para(
        "schedctl submits jobs to schedd(8), lists and shows them, acts on them (cancel, hold, release, suspend, "
        "resume, requeue), waits for them and reads their output. It talks to the system-wide daemon on the "
        "system bus, or with --user to the caller's own one on the session bus. Each command makes one D-Bus "
        "call (or subscribes to signals); the daemon decides who may do what, from the caller's uid and polkit.")
    out += para("What a person can get wrong on the command line (sizes, durations, ids, a job file) is "
                "checked before the first call, so a typo is reported even when the daemon is down. Human "
                "output follows systemctl: tables, and Key=Value lines for show, with times in local time; "
                "--json prints the raw values (bytes, microseconds).")
    out += section("GLOBAL OPTIONS")
    out += para("Accepted before and after the command.")
    for a in visible(p._actions):
        out += item(option_term(a), _help(a) or ("show the version and exit" if a.dest == "version" else ""))
    out += section("COMMANDS")
    for name, aliases, text, sp in subcommands(p):
        usage = sp.format_usage().replace("usage: ", "").strip()
        out += [".SS " + esc(name) + (f" (alias: {esc(', '.join(aliases))})" if aliases else "")]
        out += [".nf", esc(" ".join(usage.split())), ".fi"]
        out += para(sp.description or text)
        for a in sp._actions:
            if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS:
                out += item(f"\\fI{esc(a.metavar or a.dest)}\\fR", _help(a))
        for a in visible(sp._actions, glob_flags):
            out += item(option_term(a), _help(a))
    out += section("EXIT STATUS")
    for code, text in EXIT_CODES:
        out += item(bold(code), text)
    out += section("EXAMPLES")
    for text, cmd in EXAMPLES:
        out += [".PP", esc(text), ".PP", ".RS 4", ".nf", cmd, ".fi", ".RE"]
    out += section("ENVIRONMENT")
    out += item(bold("NO_COLOR"), "when set, no colours even on a terminal")
    out += item(bold("DBUS_SESSION_BUS_ADDRESS"), "the session bus of --user")
    out += section("FILES")
    out += item(bold("/usr/share/bash-completion/completions/schedctl"), "bash completion")
    out += item(bold("/etc/schedd/schedd.toml"), "the daemon's configuration, see schedd.toml(5)")
    out += section("SEE ALSO") + [esc("schedd(8), schedd.toml(5), systemctl(1), systemd.scope(5)")]
    return "\n".join(out) + "\n"


# -- schedd(8) -----------------------------------------------------------------


class _Parser(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def daemon_parser() -> argparse.ArgumentParser:
    """schedd.daemon builds its parser inside parse_args: catch it at the parse."""
    from schedd import daemon

    real = argparse.ArgumentParser.parse_args

    def grab(self, *_a, **_k):
        raise _Parser(self)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign]
    try:
        daemon.parse_args([])
    except _Parser as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
    raise RuntimeError("schedd.daemon.parse_args built no parser")


def schedd_page() -> str:
    p = daemon_parser()
    out = header("schedd", 8, "schedd manual")
    out += section("NAME") + [esc("schedd - the schedd job scheduler daemon")]
    out += section("SYNOPSIS") + [".nf", esc(" ".join(p.format_usage().replace("usage: ", "").split())), ".fi"]
    out += section("DESCRIPTION")
    out += para("schedd queues batch jobs and runs each in its own transient systemd scope, "
                "schedd-job-ID.scope in schedd.slice, as the user who submitted it, with the CPUs, memory and "
                "GPUs the scheduler allots. Clients talk to it over D-Bus (org.schedd.Schedd1 on the system bus, "
                "or on a user's session bus with --user); schedctl(1) is its command-line client.")
    out += para("It is started by systemd as schedd.service (Type=notify): it recovers its state and re-adopts "
                "running jobs first, then takes its bus name and reports READY, so no client sees a half-recovered "
                "daemon.")
    out += section("OPTIONS")
    for a in visible(p._actions):
        out += item(option_term(a), _help(a) or ("show the version and exit" if a.dest == "version" else ""))
    out += section("SIGNALS")
    out += item(bold("SIGTERM, SIGINT"), "stop: the daemon saves its state, leaves the bus and exits. Running "
                "jobs are not stopped: they go on in their scopes.")
    out += section("RECOVERY")
    out += para("On start, the job store in the state directory is read back. A job whose scope still runs is "
                "re-adopted: it keeps running and its end is recorded as usual. A job that ended while the "
                "daemon was away gets its exit status from the exit file its supervisor left (STATE/exits), so "
                "its exit code is right. Queued jobs start when their resources are free again. This is also "
                "what happens on a package upgrade: the new daemon replaces the old one and no job is lost.")
    out += para("The daemon sends WATCHDOG=1 to systemd; if it loses the bus connection it exits with status 1 "
                "and systemd restarts it (Restart=on-failure).")
    out += section("FILES")
    out += item(bold("/etc/schedd/schedd.toml"), "configuration, see schedd.toml(5)")
    out += item(bold("/var/lib/schedd"), "the state: the job store and, in exits/ (mode 0700), the exit files")
    out += item(bold("/lib/systemd/system/schedd.service"), "the system service; schedd.slice holds the jobs")
    out += item(bold("/usr/lib/systemd/user/schedd.service"), "the per-user service (systemctl --user)")
    out += item(bold("/usr/share/dbus-1/system.d/org.schedd.Schedd1.conf"), "who may own and call the bus name")
    out += item(bold("/usr/share/polkit-1/actions/org.schedd.Schedd1.policy"),
                "polkit actions: managing other users' jobs, raised priorities")
    out += section("SEE ALSO") + [esc("schedctl(1), schedd.toml(5), systemd.scope(5), systemd.resource-control(5)")]
    return "\n".join(out) + "\n"


# -- schedd.toml(5) ------------------------------------------------------------


@dataclass
class Key:
    section: str
    name: str
    example: str  # the value shown in the example (the default, or a sample where the default is computed)
    text: str


def config_keys() -> dict[str, list[str]]:
    """Every section and key schedd/config.py accepts, asked of the loader itself: an unknown key
    is refused with the list of the known ones."""
    from schedd import config

    cfg_sections: dict[str, list[str]] = {}
    try:
        config._apply(config.Config(), {"__probe__": {}})
    except config.ConfigError as e:
        names = str(e).split("known: ", 1)[1].split(", ")
    for s in names:
        if s == "peers":
            continue
        try:
            config._apply(config.Config(), {s: {"__probe__": 1}})
        except config.ConfigError as e:
            cfg_sections[s] = str(e).split("known: ", 1)[1].split(", ")
    cfg_sections["peers"] = ["name", "url", *sorted(config.SLURM_PEER_KEYS - {"name", "url"})]
    return cfg_sections


_KEY = re.compile(r"^#\s?(?P<name>[a-z_]+)\s*=\s*(?P<value>.*?)(?:\s{2,}#\s*(?P<text>.*))?$")
_SECTION = re.compile(r"^(?:#\s*)?\[\[?([a-z_]+)\]\]?\s*$")


def example_keys(text: str) -> dict[tuple[str, str], Key]:
    """The example's commented keys: '# key = value   # what it does', continued on the lines
    below that are indented or start with '#' and a wide gap (a value's rest, then '# more')."""
    keys: dict[tuple[str, str], Key] = {}
    sect, last = "", None
    for line in text.splitlines():
        s = line.strip()
        m = _SECTION.match(s)
        if m:
            sect, last = m.group(1), None
            continue
        k = _KEY.match(s)
        if k and sect:
            last = Key(sect, k["name"], k["value"].strip(), (k["text"] or "").strip())
            keys[(sect, last.name)] = last
            continue
        if last and (line.startswith(" ") or line.startswith("#    ")) and s.startswith("#"):
            rest = s[1:].strip()
            if line.startswith(" ") or rest.startswith("#"):  # more words of the text
                value, more = "", rest.lstrip("#")
            else:  # the rest of a long value, maybe followed by '# more words'
                value, _, more = rest.partition("#")
            if value.strip():
                last.example = f"{last.example} {value.strip()}"
            last.text = f"{last.text} {more.strip()}".strip()
            continue
        last = None
    return keys


def toml_page() -> str:
    known = config_keys()
    doc = example_keys(EXAMPLE.read_text())
    missing = [f"[{s}] {k}" for s, ks in known.items() for k in ks if (s, k) not in doc]
    if missing:
        raise SystemExit(f"manpages: keys schedd/config.py accepts but {EXAMPLE.name} does not document: "
                         + ", ".join(missing))
    out = header("schedd.toml", 5, "schedd manual")
    out += section("NAME") + [esc("schedd.toml - configuration of the schedd job scheduler")]
    out += section("SYNOPSIS") + [esc("/etc/schedd/schedd.toml")]
    out += section("DESCRIPTION")
    out += para("A TOML file read by schedd(8) when it starts. Every key is optional; without the file, the "
                "defaults are what the machine has. An unknown section or key is an error, which names the "
                "known ones. Sizes are like 512M or 4G, durations like 90s, 1h30m or 7d. Restart the daemon "
                "(systemctl restart schedd) to apply a change; running jobs keep running.")
    out += para("Each key below is shown with its default (or, where the default is computed, a sample value) "
                "as in the installed example.")
    order = {sk: i for i, sk in enumerate(doc)}  # the example's order, which groups related keys
    first = {}
    for sk in doc:
        first.setdefault(sk[0], len(first))
    for s, ks in sorted(known.items(), key=lambda kv: first.get(kv[0], 99)):
        ks = sorted(ks, key=lambda k: order[(s, k)])
        out += [".SH [[peers]]" if s == "peers" else f".SH [{s}]"]
        if s == "peers":
            out += para("One table per peer node of a federation: its name and URL (https:// to other machines); "
                        "with kind = \"slurm\", a Slurm cluster reached at its slurmrestd.")
        for k in ks:
            key = doc[(s, k)]
            out += item(f"{bold(k)} = {esc(key.example)}", key.text)
    out += section("FILES")
    out += item(bold("/etc/schedd/schedd.toml"), "the system daemon's configuration (a conffile of the package)")
    out += item(bold("~/.config/schedd/schedd.toml"), "the per-user daemon's (schedd --user)")
    out += section("SEE ALSO") + [esc("schedd(8), schedctl(1)")]
    return "\n".join(out) + "\n"


SLURM_SAYS = {
    "sbatch": "submit a batch script (#SBATCH directives, --array, --dependency, --signal, --wrap, --parsable)",
    "squeue": "list queued and running jobs (-o/--format, -h, -t, -j, -u, --me, -n; arrays as A_[range])",
    "scancel": "cancel jobs or whole arrays, or signal them (-s/--signal); finished or unknown ids exit 0",
    "sacct": "finished and running jobs from schedd's records (-j, -X, -o/--format, -P/-p, -n, -S/-E, -u)",
    "sinfo": "this node, or the federation's nodes, as one partition",
    "scontrol": "show job N, show config, show hostnames, hold, release, requeue",
    "srun": "inside a job: run tasks as steps of its allocation; outside: run one job in the foreground",
    "sacctmgr": "answers empty (schedd has no accounts database)",
    "sshare": "answers empty (no fair-share tree)",
}


def slurm_page() -> str:
    from schedd_slurm.main import COMMANDS

    missing = sorted(set(COMMANDS) - set(SLURM_SAYS))
    if missing:
        raise SystemExit(f"manpages: Slurm commands schedd-slurm answers but the page does not describe: {missing}")
    out = header("schedd-slurm", 1, "schedd manual")
    out += section("NAME") + [esc("schedd-slurm - Slurm's commands, answered by schedd")]
    out += section("SYNOPSIS")
    for name in COMMANDS:
        out += [f"{bold(name)} [\\fIOPTIONS\\fR]...", ".br"]
    out += [f"{bold('schedd-slurm install-links')} [{bold('--force')}] \\fIDIR\\fR"]
    out += section("DESCRIPTION")
    out += para("One program answers as each of Slurm's commands below, according to the name it is called "
                "by, speaking to the local schedd(8) over D-Bus as schedctl(1) does, and printing what Slurm "
                "22.05 prints, so that #SBATCH scripts and tools written for Slurm (submitit, dask-jobqueue, "
                "Snakemake, Parsl) run unchanged. Batch jobs run as their submitter in their schedd scope, "
                "with Slurm's SLURM_* environment.")
    out += para("The names are links in a directory of their own, put last on login shells' PATH, so that a "
                "real Slurm's commands, where installed, always come first. install-links makes them in DIR "
                "(an existing file that is not such a link is left alone unless --force).")
    out += section("COMMANDS")
    for name in COMMANDS:
        out += item(bold(name), SLURM_SAYS[name])
    out += section("EXIT STATUS")
    out += para("As Slurm's: 0 on success, 1 on an error (with Slurm's message on standard error); sbatch "
                "--wait and srun exit with the job's own status.")
    out += section("FILES")
    out += item(bold("/usr/lib/schedd/slurm-bin"), "the command names (the package; /opt/schedd/slurm-bin from "
                "packaging/install.sh)")
    out += item(bold("/etc/profile.d/schedd-slurm.sh"), "puts that directory last on PATH")
    out += section("SEE ALSO") + [esc("schedctl(1), schedd(8); the README's \"Coming from Slurm\" section and "
                                      "schedd_slurm/COMPAT.md (every option: done, accepted and ignored, "
                                      "or refused)")]
    return "\n".join(out) + "\n"


PAGES = {"schedctl.1": schedctl_page, "schedd.8": schedd_page, "schedd.toml.5": toml_page,
         "schedd-slurm.1": slurm_page}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: manpages.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, make in PAGES.items():
        (out / name).write_text(make())
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
