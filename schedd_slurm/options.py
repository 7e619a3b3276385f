"""Command-line and #SBATCH option parsing exactly as Slurm reads them (getopt_long rules).

Short options (`-n 2`, `-n2`, bundled flags), long options (`--ntasks=2`, `--ntasks 2`), unique
prefixes of long options (`--job` for `--jobs`), and `#SBATCH` lines of a batch script read with
the same table, stopping at the first line that is neither blank nor a comment.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


class SlurmUsage(Exception):
    """Bad input on the command line or in a script: printed as `<cmd>: error: <message>`, exit 1."""


class GetoptError(SlurmUsage):
    """What getopt itself says (glibc's words): `<cmd>: <message>` and a `Try "<cmd> --help"` line."""


NONE, REQUIRED, OPTIONAL = 0, 1, 2


@dataclass(frozen=True)
class Opt:
    """One option: its long name (dest), short letter, whether it takes a value, and whether it repeats."""

    long: str
    short: str = ""
    arg: int = REQUIRED
    repeat: bool = False


@dataclass
class Parsed:
    """Options by long name (a list for repeatable ones, True for flags) and the positional arguments."""

    values: dict[str, object] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def get(self, name: str, default: object = None) -> object:
        return self.values.get(name, default)


class Table:
    """The option table of one command."""

    def __init__(self, prog: str, opts: list[Opt]) -> None:
        self.prog = prog
        self.by_long = {o.long: o for o in opts}
        self.by_short = {o.short: o for o in opts if o.short}

    def lookup_long(self, name: str, word: str = "") -> Opt:
        if name in self.by_long:
            return self.by_long[name]
        matches = [o for n, o in self.by_long.items() if n.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise GetoptError(f"unrecognized option '{word or '--' + name}'")
        names = " ".join(f"'--{o.long}'" for o in sorted(matches, key=lambda o: o.long))
        raise GetoptError(f"option '{word or '--' + name}' is ambiguous; possibilities: {names}")

    def _store(self, out: Parsed, opt: Opt, value: object) -> None:
        if opt.repeat:
            out.values.setdefault(opt.long, []).append(value)  # type: ignore[union-attr]
        else:
            out.values[opt.long] = value

    def parse(self, argv: list[str], *, stop_at_positional: bool = False, into: Parsed | None = None) -> Parsed:
        """getopt_long over argv. stop_at_positional: the first non-option ends the options (sbatch's
        script, srun's command); otherwise options and positionals mix (squeue, scancel)."""
        out = into if into is not None else Parsed()
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                out.args.extend(argv[i + 1:])
                break
            if a.startswith("--"):
                name, eq, val = a[2:].partition("=")
                opt = self.lookup_long(name, a)
                if opt.arg == NONE:
                    if eq:
                        raise GetoptError(f"option '--{opt.long}' doesn't allow an argument")
                    self._store(out, opt, True)
                else:
                    i = self._store_value(out, opt, val if eq else None, argv, i,
                                          f"option '--{opt.long}' requires an argument")
            elif a.startswith("-") and len(a) > 1:
                j = 1
                while j < len(a):
                    c = a[j]
                    opt = self.by_short.get(c)
                    if opt is None:
                        raise GetoptError(f"invalid option -- '{c}'")
                    rest = a[j + 1:]
                    if opt.arg == NONE:
                        self._store(out, opt, True)
                        j += 1
                        continue
                    i = self._store_value(out, opt, rest or None, argv, i, f"option requires an argument -- '{c}'")
                    break
            else:
                if stop_at_positional:
                    out.args.extend(argv[i:])
                    break
                out.args.append(a)
            i += 1
        return out

    def _store_value(self, out: Parsed, opt: Opt, inline: str | None, argv: list[str], i: int, missing: str) -> int:
        """An option that takes a value: the one in the same word (--opt=V, -oV), True for an
        optional one without, else the next word (the index of the last word used)."""
        if inline is not None:
            self._store(out, opt, inline)
        elif opt.arg == OPTIONAL:
            self._store(out, opt, True)
        else:
            if i + 1 >= len(argv):
                raise GetoptError(missing)
            i += 1
            self._store(out, opt, argv[i])
        return i


def split_directive(line: str) -> list[str]:
    """The words of one `#SBATCH` line after the prefix: whitespace-split honouring quotes, up to a
    comment (`#` starting a word), as Slurm's own tokenizer does."""
    lex = shlex.shlex(line, posix=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError as e:
        raise SlurmUsage(f"#SBATCH line {line.strip()!r}: {e}") from None


PREFIXES = ("#SBATCH", "#SLURM")


def check_script(body: str) -> None:
    """What sbatch refuses before reading a script: no `#!` first, DOS line ends, a NUL."""
    if not body:
        raise SlurmUsage("Batch script is empty!")
    if "\0" in body:
        raise SlurmUsage("The batch script contains a NUL character")
    if "\r\n" in body:
        raise SlurmUsage("Batch script contains DOS line breaks (\\r\\n)\n"
                         "sbatch: error: instead of expected UNIX line breaks (\\n).")
    if not body.startswith("#!"):
        raise SlurmUsage("This does not look like a batch script.  The first\n"
                         "sbatch: error: line must start with #! followed by the path to an interpreter.\n"
                         "sbatch: error: For instance: #!/bin/sh")


def directive_words(body: str) -> list[str]:
    """Every option word of the script's `#SBATCH` lines, in order, up to its first command line."""
    words: list[str] = []
    for n, line in enumerate(body.split("\n")):
        if n == 0 and line.startswith("#!"):
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # the first command ends the directives
        for prefix in PREFIXES:
            if line.startswith(prefix) and (len(line) == len(prefix) or line[len(prefix)] in " \t"):
                words.extend(split_directive(line[len(prefix):]))
                break
    return words


def parse_script_and_cli(table: Table, body: str, cli: Parsed) -> Parsed:
    """The directives of the script, then the command line over them (the command line wins)."""
    from_script = table.parse(directive_words(body))
    if from_script.args:
        raise SlurmUsage(f"#SBATCH: unexpected word {from_script.args[0]!r} (options only)")
    merged = Parsed(dict(from_script.values), list(cli.args))
    for k, v in cli.values.items():
        opt = table.by_long.get(k)  # None: a value the command keeps beside the options (sbatch's script path)
        if opt is not None and opt.repeat and k in merged.values:
            merged.values[k] = list(merged.values[k]) + list(v)  # type: ignore[arg-type]
        else:
            merged.values[k] = v
    return merged
