"""The daemon's log handler: a loop turn's lines in one write, warnings at once, nothing lost."""

from __future__ import annotations

import asyncio
import logging
import threading

from schedd.logs import JournalFormatter, TurnBufferedHandler


class Stream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def logger(stream: Stream) -> tuple[logging.Logger, TurnBufferedHandler]:
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JournalFormatter("%(message)s"))
    log = logging.getLogger(f"test-logs-{id(stream)}")
    log.propagate, log.level = False, logging.INFO
    log.handlers = [handler]
    return log, handler


async def test_one_turns_lines_go_out_in_one_write_in_order():
    stream = Stream()
    log, _ = logger(stream)
    for i in range(3):
        log.info("job %d submitted", i)
    assert stream.writes == []  # not yet: the turn is not over
    await asyncio.sleep(0)
    assert stream.writes == ["<6>job 0 submitted\n<6>job 1 submitted\n<6>job 2 submitted\n"]
    log.info("next turn")
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["<6>next turn\n"]


async def test_a_warning_goes_out_at_once_after_the_lines_before_it():
    stream = Stream()
    log, _ = logger(stream)
    log.info("job 1 running")
    log.warning("job 1 failed")
    assert stream.writes == ["<6>job 1 running\n<4>job 1 failed\n"]


async def test_lines_from_another_thread_or_outside_a_loop_are_not_held():
    stream = Stream()
    log, handler = logger(stream)
    t = threading.Thread(target=log.info, args=("from the store's thread",))
    t.start()
    t.join()
    assert stream.writes == ["<6>from the store's thread\n"]
    log.info("held for the turn")
    handler.flush()  # what logging.shutdown() does at exit
    assert stream.writes[-1] == "<6>held for the turn\n"


def test_without_a_loop_each_line_is_written():
    stream = Stream()
    log, _ = logger(stream)
    log.info("starting")
    assert stream.writes == ["<6>starting\n"]
