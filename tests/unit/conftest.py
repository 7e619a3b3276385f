"""Fixtures shared by unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedd.config import Config
from schedd.core.engine import Engine
from schedd.core.store import Store


@pytest.fixture
async def engine(tmp_path: Path):
    """An engine on a real store with no executor (nothing runs; a module may define its own)."""
    cfg = Config(node_name="n", cpu_ids=[0], memory=4 << 30, state_dir=tmp_path)
    store = Store(tmp_path / "schedd.db")
    e = Engine(cfg, store)
    e.jobs_dir.mkdir()
    yield e
    await store.drain()
    store.close()
