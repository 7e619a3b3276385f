"""The signals sent for every job, and ListJobs' rows, marshalled from its fields straight to D-Bus bytes.

dbus-fast marshals a Variant per property, and a job's InterfacesAdded carries all 37: building
and marshalling it was a third of the daemon's time per job of a SubmitMany batch. An a{sv}
entry starts 8-aligned wherever it sits, so its bytes do not depend on its place: each property
is a fixed prefix (its name, its signature, the value's alignment) and its value. This module
writes, from the same getters (schedd.api.jobview), exactly the bytes dbus-fast writes for the
same body (tests/unit/test_dbus_wire.py compares them), at about a fifth of the cost. The
Messages it makes read back their body like any other, for whoever inspects them.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast._private.marshaller import Marshaller
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.signature import Variant

from schedd import JOB_IFACE, MANAGER_IFACE, MANAGER_PATH, job_path
from schedd.api.jobview import JOB_KEYS, JobKey
from schedd.core.model import Job
from schedd.protocol import JOB_PROPERTIES, PRIVATE_JOB_KEYS

OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
_PAD = tuple(b"\0" * n for n in range(8))
_U32 = struct.Struct("<I").pack
_FIXED = {"t": ("Q", 8), "u": ("I", 4), "i": ("i", 4), "b": ("I", 4)}  # struct code, size (= alignment)


def _pad(n: int, align: int) -> int:
    return -n % align


def _string(s: str) -> bytes:
    b = s.encode()
    return _U32(len(b)) + b + b"\0"


def _strings(items: list[str]) -> bytes:
    """'as' from a 4-aligned offset: the length, then each string 4-aligned."""
    out = []
    n = 0
    for s in items:
        if n & 3:
            out.append(_PAD[4 - (n & 3)])
            n += 4 - (n & 3)
        b = _string(s)
        out.append(b)
        n += len(b)
    return _U32(n) + b"".join(out)


def _prefix(name: str, sig: str) -> bytes:
    """An entry's bytes before its value, from an 8-aligned start: key, signature, the value's padding."""
    key = name.encode()
    head = _U32(len(key)) + key + b"\0" + bytes([len(sig)]) + sig.encode() + b"\0"
    align = _FIXED[sig][1] if sig in _FIXED else 4  # s, as, au, at: a 4-aligned length first
    return head + _PAD[_pad(len(head), align)]


def _compile_rows(keys: tuple[JobKey, ...] = JOB_KEYS) -> Callable[[Job, bool], bytes]:
    """A generated function (like jobs._all_variants) writing a job's a{sv} entries of keys, each
    8-aligned: a run of fixed-size values is one struct.pack with their prefixes and paddings, an
    empty array is its constant entry, the rest are concatenated."""
    ns: dict[str, Any] = {"S": _string, "AS": _strings, "PAD": _PAD, "U32": _U32, "pack": struct.pack}
    hidden = {}
    for name, value in PRIVATE_JOB_KEYS.items():
        pre = _prefix(name, JOB_PROPERTIES[name])
        hidden[name] = pre + _value_bytes(JOB_PROPERTIES[name], value, len(pre))
    lines = ["def row(j, private):", "    p = []"]
    run: list[tuple[str, int, str, str]] = []  # fixed-size entries not written yet: (format, padding, args)

    def flush(last: bool) -> None:
        """The run as one struct; after the row's last entry comes no padding."""
        if run:
            fmt = "<" + "".join(f + ("" if last and n == len(run) - 1 else f"{pad}x")
                                for n, (f, pad, _, _) in enumerate(run))
            name = f"r{len(lines)}"
            ns[name] = struct.Struct(fmt).pack
            lines.append(f"    p.append({name}({', '.join(a for _, _, *args in run for a in args)}))")
            run.clear()

    if not keys:
        return lambda j, private: b""
    for i, k in enumerate(keys):
        sig = JOB_PROPERTIES[k.name]
        pre = _prefix(k.name, sig)
        ns[f"k{i}"] = pre
        if k.direct:
            value = "j." + k.fields[0]
        else:
            ns[f"g{i}"] = k.get
            value = f"g{i}(j)"
        last = i == len(keys) - 1
        if sig in _FIXED and k.name not in hidden:
            code, size = _FIXED[sig]
            run.append((f"{len(pre)}s{code}", _pad(len(pre) + size, 8), f"k{i}", value))
            if last:
                flush(True)
            continue
        flush(False)
        if sig == "s":
            expr = f"k{i} + S({value})"
        elif sig == "as":
            expr = f"k{i} + AS({value})"
        elif sig in ("au", "at"):
            code, size = _FIXED[sig[1]]
            # the length sits 4-aligned after the prefix; 8-byte items start 8-aligned after it
            gap = _PAD[_pad(len(pre) + 4, size)]
            ns[f"e{i}"] = pre + _U32(0) + gap
            ns[f"gap{i}"] = gap
            expr = (f"(e{i} if not (v := {value}) else "
                    f"k{i} + U32({size} * len(v)) + gap{i} + pack('<%d{code}' % len(v), *v))")
        else:
            raise TypeError(f"no wire encoding for {k.name}'s signature {sig!r}")
        if k.name in hidden:
            ns[f"h{i}"] = hidden[k.name]
            expr = f"({expr} if private else h{i})"
        lines.append(f"    e = {expr}")
        lines.append("    p.append(e)" if last else "    p.append(e); p.append(PAD[-len(e) & 7])")
    lines.append("    return b''.join(p)")
    exec("\n".join(lines) + "\n", ns)  # noqa: S102 - our own table
    return ns["row"]


def _value_bytes(sig: str, value: Any, at: int) -> bytes:
    """One value's bytes at offset `at` of an 8-aligned entry (for the constant hidden values)."""
    if sig in _FIXED:
        return struct.pack("<" + _FIXED[sig][0], value)
    if sig == "s":
        return _string(value)
    if sig == "as":
        return _strings(value)
    code, size = _FIXED[sig[1]]
    return _U32(size * len(value)) + _PAD[_pad(at + 4, size)] + struct.pack(f"<{len(value)}{code}", *value)


job_row = _compile_rows()


@functools.lru_cache(maxsize=64)
def row_writer(names: frozenset[str] | None) -> Callable[[Job, bool], bytes]:
    """job_row for the properties named (ListJobs' Properties), in the contract's order; None: all.
    Compiled once per selection: a client paging with the same Properties reuses it."""
    if names is None:
        return job_row
    return _compile_rows(tuple(k for k in JOB_KEYS if k.name in names))


class Premarshalled(Message):
    """A signal whose body is bytes already: the header is marshalled once per kind and the serial
    and length patched in when dbus-fast writes it."""

    _headers: dict[tuple[str, str, str, str], bytes] = {}

    def __init__(self, path: str, interface: str, member: str, signature: str, body: bytes) -> None:
        super().__init__(path=path, interface=interface, member=member, signature=signature,
                         message_type=MessageType.SIGNAL, validate=False)
        self.raw = body

    @property
    def body(self) -> list[Any]:  # type: ignore[override]
        """The body as dbus-fast reads it back (tests and logs; the bus writes the bytes)."""
        self.serial = self.serial or 1
        return Unmarshaller(__import__("io").BytesIO(bytes(self._marshall(False)))).unmarshall().body

    @body.setter
    def body(self, value: list[Any]) -> None:
        if value:
            raise AttributeError("a premarshalled message's body is its bytes")

    def _head(self) -> bytes:
        key = (self.path, self.interface, self.member, self.signature)
        header = self._headers.get(key)
        if header is None:
            header = self._headers[key] = _header(MessageType.SIGNAL, [
                (1, Variant("o", self.path)), (2, Variant("s", self.interface)), (3, Variant("s", self.member)),
                (8, Variant("g", self.signature))])
        return header

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        out = bytearray(self._head())
        struct.pack_into("<II", out, 4, len(self.raw), self.serial)
        out += self.raw
        return out


class PremarshalledReply(Premarshalled):
    """A method's return whose body is bytes already (ListJobs' rows: schedd.api.dbus.service)."""

    def __init__(self, call: Message, signature: str, body: bytes) -> None:
        Message.__init__(self, message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                         destination=call.sender, signature=signature, validate=False)
        self.raw = body

    def _head(self) -> bytes:
        fields = [(5, Variant("u", self.reply_serial))]
        if self.destination:
            fields.append((6, Variant("s", self.destination)))
        return _header(MessageType.METHOD_RETURN, fields + [(8, Variant("g", self.signature))])


def _header(kind: MessageType, fields: list[tuple[int, Variant]]) -> bytes:
    """A message's header, by dbus-fast's own marshaller (fields in its order), length and serial 0."""
    m = Marshaller("yyyyuua(yv)", [ord("l"), kind.value, 0, 1, 0, 0, fields])
    out = bytes(m.marshall())
    return out + _PAD[_pad(len(out), 8)]


def rows_body(rows: list[bytes]) -> bytes:
    """aa{sv} (ListJobs' reply) from each row's entries as job_row writes them."""
    out = []
    n = 4  # the outer array's length, then its elements (4-aligned: no padding before the first)
    for r in rows:
        if n & 3:
            out.append(_PAD[4 - (n & 3)])
            n += 4 - (n & 3)
        gap = _PAD[_pad(n + 4, 8)]  # the row's entries start 8-aligned, even when there are none
        out += (_U32(len(r)), gap, r)
        n += 4 + len(gap) + len(r)
    return _U32(n - 4) + b"".join(out)


def with_string(row: bytes, name: str, value: str) -> bytes:
    """A row with one more entry, a string (ListJobs' folded ArrayTasks)."""
    return row + _PAD[-len(row) & 7] + _prefix(name, "s") + _string(value)


def interfaces_added(job: Job, private: bool) -> Message:
    """InterfacesAdded(o path, a{sa{sv}} {JOB_IFACE: every property}) for a job."""
    path = _string(job_path(job.id))  # at 0; the dict's length next, 4-aligned (a string ends anywhere)
    head = path + _PAD[_pad(len(path), 4)]
    iface = _IFACE_KEY  # the one entry starts 8-aligned after the dict's length
    pre = _PAD[_pad(len(head) + 4, 8)]
    row = job_row(job, private)
    inner_gap = _PAD[_pad(len(iface) + 4, 8)]  # entry start is 8-aligned, so this is constant
    entry = iface + _U32(len(row)) + inner_gap + row
    body = head + _U32(len(entry)) + pre + entry
    return Premarshalled(MANAGER_PATH, OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}", body)


_IFACE_KEY = _string(JOB_IFACE) + _PAD[_pad(len(_string(JOB_IFACE)), 4)]


def job_state_changed(job: Job) -> Message:
    """JobStateChanged(t id, o path, s state, s reason)."""
    path = _string(job_path(job.id))  # at 8
    state = _string(job.state.value)
    at = 8 + len(path)
    body = [struct.pack("<Q", job.id), path, _PAD[_pad(at, 4)]]
    at += _pad(at, 4) + len(state)
    body += [state, _PAD[_pad(at, 4)], _string(job.reason)]
    return Premarshalled(MANAGER_PATH, MANAGER_IFACE, "JobStateChanged", "toss", b"".join(body))
