"""The daemon's log lines to its stderr, which systemd hands to the journal.

A busy daemon logs a few lines per job (submitted, running, ended): written one by one, each is a
write(2) to journald's stream, ~30 µs, about a sixth of the daemon's CPU per short job. The lines
of one turn of the event loop are written together instead; WARNING and above, lines from other
threads and lines logged outside a running loop go out at once, and logging.shutdown() flushes
what is left, so what a crash would lose is at most one turn's INFO lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """'<6>message': journald reads the priority prefix from a service's stderr (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


class TurnBufferedHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines of one loop turn in one write."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        self._lines.append(line)
        if record.levelno >= logging.WARNING or not self._schedule():
            self.flush()

    def _schedule(self) -> bool:
        if self._scheduled:
            return True
        try:
            loop = asyncio.get_running_loop()  # raises in a thread without one: written at once
        except RuntimeError:
            return False
        loop.call_soon(self.flush)
        self._scheduled = True
        return True

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled = False
            if self._lines and self.stream is not None:
                text = "".join(self._lines)
                self._lines.clear()
                self.stream.write(text)
                if hasattr(self.stream, "flush"):
                    self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stderr must not stop the daemon
            self._lines.clear()
        finally:
            self.release()


def setup_logging(verbose: bool) -> None:
    handler = TurnBufferedHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("dbus_fast").setLevel(logging.WARNING)
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False  # no field of ours uses them
