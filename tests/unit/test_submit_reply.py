"""Submit and SubmitMany answer once the jobs are durable, ahead of the jobs' signals.

The reply goes out before the batch's InterfacesAdded and JobStateChanged (the bus daemon routes
it first, and the caller works on its next call while the daemon announces the jobs and the bus
daemon routes the signals), in the same turn of the loop, so no call comes between them. Driven
through ServiceBus's own method handler on an unconnected bus whose sends are kept.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from types import SimpleNamespace

from dbus_fast import Message, MessageType, Variant
from test_dbus_jobs import SENDERS, call

from schedd import JOB_IFACE, MANAGER_IFACE, MANAGER_PATH, job_path
from schedd.api.dbus.service import DBusService, ServiceBus
from schedd.core.engine import Engine

HELD = {"Command": Variant("as", ["true"]), "Hold": Variant("b", True), "WorkingDirectory": Variant("s", "/")}


class Watched:
    """An unconnected ServiceBus; each send is kept with whether the store still had any of the
    batch's rows unwritten at that moment."""

    def __init__(self, engine: Engine) -> None:
        self.bus = ServiceBus(bus_address="unix:path=/nonexistent/bus")
        self.sent: list[tuple[Message, bool]] = []
        self.engine = engine
        self.bus.send = self._send  # type: ignore[method-assign]
        engine.executor = SimpleNamespace(name="systemd")
        self.service = DBusService(engine, self.bus)
        self.service._uids.update(SENDERS)

    def _send(self, msg: Message) -> None:
        self._send_kept(msg)

    def _send_kept(self, msg: Message) -> None:
        ids = msg.body[0] if msg.message_type == MessageType.METHOD_RETURN and msg.signature == "at" else []
        self.sent.append((msg, any(self.engine.store.unwritten(i) for i in ids)))

    async def ask(self, msg: Message) -> list[Message]:
        """Every message sent while the call's task ran, once it is done."""
        self.sent.clear()
        self.bus._process_message(msg)
        deadline = time.monotonic() + 10
        while self.bus._pending_futures or not self.sent:
            assert time.monotonic() < deadline, "the call did not finish"
            await asyncio.sleep(0.01)
        return [m for m, _ in self.sent]


async def test_submitmany_answers_once_durable_and_before_the_batchs_signals(engine: Engine):
    w = Watched(engine)
    sent = await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "SubmitMany", "aa{sv}", [[HELD] * 300]))
    reply, unwritten = w.sent[0]
    assert reply.message_type == MessageType.METHOD_RETURN and reply.reply_serial == 7
    ids = reply.body[0]
    assert len(ids) == 300 and not unwritten  # durable when the answer went out
    assert [m.message_type for m in sent].count(MessageType.METHOD_RETURN) == 1
    signals = [(m.member, m.body[0]) for m in sent[1:]]
    expected = []
    for i in ids:
        expected += [("InterfacesAdded", job_path(i)), ("JobStateChanged", i)]
    assert signals == expected
    assert {m.body[2] for m in sent[1:] if m.member == "JobStateChanged"} == {"HELD"}


async def test_a_call_right_after_the_answer_finds_every_job_announced(engine: Engine):
    """The answer and the batch's announcements leave in one turn of the loop: a Cancel of the last
    id, sent the moment the answer is, finds its object, and its signals follow its InterfacesAdded."""
    w = Watched(engine)
    engine.SLICE = 0  # the batch yields to the loop at every step it may
    asked: list[Message] = []

    def cancel_on_answer(msg: Message) -> None:
        w._send_kept(msg)
        if msg.message_type == MessageType.METHOD_RETURN and msg.signature == "at":
            last = msg.body[0][-1]
            asked.append(call(job_path(last), JOB_IFACE, "Cancel"))
            asyncio.get_running_loop().call_soon(w.bus._process_message, asked[-1])

    w.bus.send = cancel_on_answer  # type: ignore[method-assign]
    await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "SubmitMany", "aa{sv}", [[HELD] * 50]))
    deadline = time.monotonic() + 10
    while len([m for m, _ in w.sent if m.message_type != MessageType.SIGNAL]) < 2:
        assert time.monotonic() < deadline, "the Cancel was not answered"
        await asyncio.sleep(0.01)
    replies = [m for m, _ in w.sent if m.message_type != MessageType.SIGNAL]
    assert [m.message_type for m in replies] == [MessageType.METHOD_RETURN] * 2, [m.body for m in replies]
    last = replies[0].body[0][-1]
    of_last = [(m.member, m.body[2] if m.member == "JobStateChanged" else "") for m, _ in w.sent
               if (m.member == "JobStateChanged" and m.body[0] == last) or
               (m.member == "InterfacesAdded" and m.body[0] == job_path(last)) or m.path == job_path(last)]
    assert of_last[:2] == [("InterfacesAdded", ""), ("JobStateChanged", "HELD")], of_last
    assert ("JobStateChanged", "CANCELLED") in of_last[2:], of_last


async def test_a_batch_too_big_to_announce_at_once_is_answered_after_its_signals(engine: Engine):
    w = Watched(engine)
    engine.ANSWER_AHEAD = 10
    sent = await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "SubmitMany", "aa{sv}", [[HELD] * 50]))
    assert [m.message_type for m in sent] == [MessageType.SIGNAL] * 100 + [MessageType.METHOD_RETURN]
    assert not w.sent[-1][1]


async def test_submit_answers_its_struct_before_the_signals(engine: Engine):
    w = Watched(engine)
    sent = await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "Submit", "a{sv}", [HELD]))
    assert [m.message_type for m in sent] == [MessageType.METHOD_RETURN, MessageType.SIGNAL, MessageType.SIGNAL]
    jid, path = sent[0].body[0]
    assert path == job_path(jid) and sent[0].signature == "(to)"
    assert [m.member for m in sent[1:]] == ["InterfacesAdded", "JobStateChanged"]


async def test_a_refused_batch_is_answered_with_its_error_and_nothing_else(engine: Engine):
    w = Watched(engine)
    bad = {**HELD, "CPUs": Variant("u", 0)}
    sent = await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "SubmitMany", "aa{sv}", [[HELD, bad]]))
    assert [(m.message_type, m.error_name) for m in sent] == [
        (MessageType.ERROR, "org.schedd.Schedd1.Error.InvalidArgument")]
    assert "spec 1" in sent[0].body[0] and engine.jobs == {}


async def test_a_failed_write_is_answered_with_its_error_and_no_signal(engine: Engine, monkeypatch):
    w = Watched(engine)

    def disk_error(rows: dict, _groups: list) -> dict:
        return dict.fromkeys(rows, sqlite3.OperationalError("disk I/O error"))  # the commit failed: every row

    monkeypatch.setattr(engine.store, "_commit", disk_error)
    sent = await w.ask(call(MANAGER_PATH, MANAGER_IFACE, "SubmitMany", "aa{sv}", [[HELD] * 50]))
    assert [m.message_type for m in sent] == [MessageType.ERROR]
    assert engine.jobs == {}
