"""Where a job's output bytes go: stdout unchanged, or JSON objects of one shape (record)."""

from __future__ import annotations

import codecs
import json
import sys
from typing import Protocol


class Sink(Protocol):
    """What a reader writes to: bytes as they are read, then finish once the reading is done."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


def record(job_id: int, path: str, text: str, node: str | None = None) -> str:
    """The one JSON object of `schedctl logs --json`: {"Id", "Path", ["Node",] "Output"}; Node
    names the node a whole remote read came from."""
    obj: dict[str, object] = {"Id": job_id, "Path": path}
    if node is not None:
        obj["Node"] = node
    obj["Output"] = text
    return json.dumps(obj)


class Raw:
    """The bytes to stdout unchanged, flushed as they come (logs -f is read as it grows)."""

    def write(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def finish(self) -> None:
        pass


class JsonLines:
    """logs -f --json: a record per chunk (JSON lines), decoded as UTF-8 across chunk boundaries;
    a chunk that completes no character prints nothing."""

    def __init__(self, job_id: int, path: str) -> None:
        self.job_id, self.path = job_id, path
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        self._emit(self.decoder.decode(data))

    def finish(self) -> None:
        self._emit(self.decoder.decode(b"", final=True))

    def _emit(self, text: str) -> None:
        if text:
            print(record(self.job_id, self.path, text), flush=True)


class JsonWhole:
    """logs --json: one record of the whole output, printed at finish (even when empty)."""

    def __init__(self, job_id: int, path: str, node: str | None = None) -> None:
        self.job_id, self.path, self.node = job_id, path, node
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def finish(self) -> None:
        print(record(self.job_id, self.path, b"".join(self.chunks).decode("utf-8", "replace"), self.node))
