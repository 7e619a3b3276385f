"""A job's output file on this machine, read by schedctl itself with the caller's own rights:
the daemon is asked (ReadOutput) only for a job that runs on another node."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from schedctl.errors import Failure

CHUNK = 1 << 20


class Tail:
    """What was appended to the file since the last look. tail -F rules: no file yet is 'nothing
    yet', and a file that shrank was truncated by a restart (requeue) and is read again from the start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    async def pump(self, write: Callable[[bytes], None]) -> None:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0
                f.seek(self.offset)
                while chunk := f.read(CHUNK):
                    self.offset += len(chunk)
                    write(chunk)
        except FileNotFoundError:
            return
        except OSError as e:
            raise Failure(f"cannot read {self.path}: {e.strerror}") from None


def read_file(job: dict[str, Any], path: str, write: Callable[[bytes], None]) -> bool:
    """The whole file as it is now, in chunks. False (and a note on stderr) when there is no file
    because the job has not started; a started job's missing file is a Failure."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                write(chunk)
    except FileNotFoundError:
        if not job.get("StartTime"):
            print(f"schedctl: job {job['Id']} has not started ({job['State']}): no output yet", file=sys.stderr)
            return False
        raise Failure(f"cannot read {path}: no such file (removed?)") from None
    except OSError as e:
        raise Failure(f"cannot read {path}: {e.strerror}") from None
    return True
