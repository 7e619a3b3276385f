"""Property-based fuzzing of Submit over the real bus (hypothesis), run inside the sandbox.

Every call must end in one of two ways: an accepted job whose properties obey the
rules, or a schedd error (org.schedd.Schedd1.Error.*) with a message that names what
is wrong. Specs that cannot even be marshalled (NUL bytes: D-Bus forbids them) are
counted apart. Accepted jobs are cancelled at once. Prints a JSON summary.
Usage: fuzz_submit.py N [seed]
"""

import asyncio
import json
import os
import sys
import threading
from collections import Counter

from dbus_fast import Variant
from dbus_fast.errors import DBusError, InvalidMessageError
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from schedd import bus as dbus
from schedd.protocol import SPEC_KEYS

SCHEDD = ("org.schedd.Schedd1", "/org/schedd/Schedd1", "org.schedd.Schedd1.Manager")
ERRORS = {f"org.schedd.Schedd1.Error.{n}" for n in ("InvalidArgument", "NotFound", "AccessDenied",
                                                    "Unsatisfiable", "InvalidState")}
U32, U64, I32 = 2**32 - 1, 2**64 - 1, 2**31

PATHS_AND_WORDS = st.sampled_from(["", "/", "/tmp", "tmp", "/nonexistent/dir", "/etc/shadow", "../..", "/root", "/var/tmp",
                                   "NAME=value", "=x", "A=", "true", "/bin/true", "sleep", "%j", "/run/x-%j.log"])
text = st.one_of(  # one branch in seven is a string of up to 1 MB
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40), PATHS_AND_WORDS, PATHS_AND_WORDS,
    st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40), PATHS_AND_WORDS, PATHS_AND_WORDS,
    st.integers(1 << 10, 1 << 20).map(lambda n: "x" * n),
)
VALUES = {
    "s": text,
    "u": st.one_of(st.integers(0, U32), st.sampled_from([0, 1, 2, U32])),
    "t": st.one_of(st.integers(0, U64), st.sampled_from([0, 1, 4 << 20, 1 << 30, 1 << 62, U64])),
    "i": st.integers(-I32, I32 - 1),
    "b": st.booleans(),
    "as": st.one_of(st.lists(text, max_size=8),
                    st.integers(0, 100_000).map(lambda n: [f"V{i}=x" for i in range(n)])),  # up to 100k entries
    "at": st.lists(st.integers(0, U64), max_size=5),
    "d": st.floats(allow_nan=False),
    "ay": st.binary(max_size=16),
}
SIGS = list(VALUES)


@st.composite
def specs(draw):
    spec = {}
    keys = draw(st.lists(st.sampled_from(list(SPEC_KEYS) + ["Bogus", "cpus", "MemoryMax"]), max_size=8,
                         unique=True))
    if draw(st.booleans()):
        keys.append("Command")
    for key in keys:
        right = SPEC_KEYS.get(key, "s")
        sig = right if draw(st.integers(0, 4)) else draw(st.sampled_from(SIGS))  # mostly the right type
        value = draw(VALUES[sig])
        if key == "Command" and sig == "as" and draw(st.booleans()):
            value = [draw(st.sampled_from(["true", "/bin/true", "sh", "", "/no/such"])), *value[:3]]
        spec[key] = (sig, value)
    if spec and draw(st.integers(0, 19)) == 0:  # one spec in twenty carries a NUL byte somewhere
        key = draw(st.sampled_from(sorted(spec)))
        spec[key] = ("s", "a\0b")
    return spec


class Bus:
    """One connection, used from hypothesis's synchronous test through a loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.bus = self.run(dbus.connect(dbus.bus_address(False)))

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def call(self, member, sig="", body=None):
        return self.run(dbus.call(self.bus, *SCHEDD, member, sig, body))


def check_job(job: dict, spec: dict, uid: int) -> None:
    v = {k: x.value for k, x in job.items()}
    assert v["Command"] and v["Command"][0], v
    assert v["CPUs"] >= 1 and 4 << 20 <= v["Memory"], v
    assert v["WorkingDirectory"].startswith("/") and v["StdoutPath"].startswith("/"), v
    want_user = spec.get("User", (None, None))
    assert v["User"] == (want_user[1] if uid == 0 and want_user[0] == "u" else uid), v  # only root may name a User
    for key, (sig, value) in spec.items():
        if key in ("CPUs", "Memory", "Priority", "GPUs") and sig == SPEC_KEYS[key]:
            assert v[key] == value, (key, v[key], value)
    assert all("=" in e and not e.startswith("=") for e in spec.get("Environment", ("as", []))[1])


def main() -> None:
    n = int(sys.argv[1])
    b = Bus()
    outcomes: Counter = Counter()
    uid = os.getuid()

    @seed(int(sys.argv[2]) if len(sys.argv) > 2 else 20261122)
    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def fuzz(spec):
        try:
            body = {k: Variant(sig, value) for k, (sig, value) in spec.items()}
        except Exception:  # noqa: BLE001 - values that do not fit their signature cannot be built at all
            outcomes["unbuildable"] += 1
            return
        try:
            ((jid, _),) = b.call("Submit", "a{sv}", [body])
        except InvalidMessageError:
            outcomes["refused by the bus library (NUL)"] += 1
            return
        except DBusError as e:
            assert e.type in ERRORS, (e.type, e.text, spec.keys())
            assert len(e.text) > 10 and (e.type.endswith("AccessDenied") or
                                         any(k in e.text for k in list(SPEC_KEYS) + ["key", "spec", "queues"])), e.text
            outcomes[e.type.rsplit(".", 1)[1]] += 1
            return
        (job,) = b.call("GetJob", "t", [jid])
        check_job(job, spec, uid)
        outcomes["accepted"] += 1
        try:
            b.call("Cancel", "t", [jid])
        except DBusError as e:
            assert e.type.endswith("InvalidState"), e  # it may already have ended
        return

    fuzz()
    print(json.dumps({"calls": sum(outcomes.values()), **outcomes}))


if __name__ == "__main__":
    main()
