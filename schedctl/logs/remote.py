"""The output of a job that runs on another node: the daemon fetches it from there (ReadOutput)."""

from __future__ import annotations

from typing import Any, Callable

from schedctl.client import Client


async def is_remote(c: Client, job: dict[str, Any]) -> bool:
    """Runs on another node: its output file is not on this machine."""
    node = job.get("Node") or ""
    return bool(node) and node != (await c.properties()).get("NodeName")


class RemoteTail:
    """What was appended since the last look, asked for from the offset read so far until the
    daemon answers with nothing."""

    def __init__(self, c: Client, job_id: int, stderr: bool) -> None:
        self.c, self.job_id, self.stderr = c, job_id, stderr
        self.offset = 0

    async def pump(self, write: Callable[[bytes], None]) -> None:
        while True:
            (data,) = await self.c.call("ReadOutput", "tbt", [self.job_id, self.stderr, self.offset])
            if not data:
                return
            self.offset += len(data)
            write(bytes(data))
