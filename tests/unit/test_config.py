"""Daemon configuration: TOML over machine defaults, and cpuset-style id lists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.config import Config, ConfigError, load, parse_id_list
from schedd.protocol import format_ranges as format_id_list

MiB, GiB = 1 << 20, 1 << 30
MACHINE_CPUS = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0-3,8", [0, 1, 2, 3, 8]),
        ("0", [0]),
        ("3,1,2", [1, 2, 3]),
        ("0-1, 4-5", [0, 1, 4, 5]),
        ("2-2", [2]),
        ("1,1,0-1", [0, 1]),
        ("", []),
        ([2, 0, 1, 1], [0, 1, 2]),
        ([], []),
    ],
)
def test_parse_id_list(value: object, expected: list[int]) -> None:
    assert parse_id_list(value, "resources.cpus") == expected


@pytest.mark.parametrize("value", ["3-1", "a", "1-", "-1", "1-2-3", "0,x", [1, -1], [1, "2"], [True], 5, None, 1.5])
def test_parse_id_list_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match="resources.cpus"):
        parse_id_list(value, "resources.cpus")


@pytest.mark.parametrize(
    "ids, text",
    [([0, 1, 2, 5], "0-2,5"), ([], ""), ([7], "7"), ([3, 0, 1, 2], "0-3"), ([0, 2, 4], "0,2,4"),
     ([0, 1, 3, 4, 6], "0-1,3-4,6")],
)
def test_format_id_list(ids: list[int], text: str) -> None:
    assert format_id_list(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=40))
def test_id_list_round_trip(ids: list[int]) -> None:
    text = format_id_list(sorted(set(ids)))
    assert parse_id_list(text, "x") == sorted(set(ids))
    # Canonical: no range is written where a single run of ids would do.
    assert format_id_list(parse_id_list(text, "x")) == text


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "schedd.toml"
    p.write_text(text)
    return p


def test_load_full_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f"""
[node]
name = "alpha"

[resources]
cpus = "{MACHINE_CPUS[0]}"
memory = "6G"
gpus = 2

[jobs]
default_memory = "512M"
kill_wait = "30s"
max_env_entries = 50

[scheduler]
policy = "first-fit"

[daemon]
state_dir = "{tmp_path}/state"
executor = "plain"
"""), user_mode=False)
    assert cfg.node_name == "alpha"
    assert cfg.cpu_ids == [MACHINE_CPUS[0]]
    assert cfg.memory == 6 * GiB
    assert cfg.gpu_ids == [0, 1]
    assert cfg.default_memory == 512 * MiB
    assert cfg.kill_wait_usec == 30_000_000
    assert cfg.max_env_entries == 50
    assert cfg.policy == "first-fit"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.executor == "plain"
    assert cfg.source == tmp_path / "schedd.toml"


def test_cpus_as_a_count_takes_the_first_machine_cpus(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[resources]\ncpus = 1\n"), user_mode=False)
    assert cfg.cpu_ids == MACHINE_CPUS[:1]


def test_gpus_as_an_id_list(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[resources]\ngpus = "0,2-3"\n'), user_mode=False)
    assert cfg.gpu_ids == [0, 2, 3]


def test_defaults_without_file_sections(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, ""), user_mode=False)
    assert cfg.policy == "backfill"
    assert cfg.cpu_ids == MACHINE_CPUS
    assert 0 < cfg.default_memory <= GiB
    assert cfg.source is None  # an empty file sets nothing


def test_default_policy_is_backfill() -> None:
    assert Config().policy == "backfill"


def test_time_limits_and_gpu_device(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[jobs]\ndefault_time = "1h"\nmax_time = "2-00:00:00"\n'
                               '[resources]\ngpus = 2\ngpu_device = "/dev/test-gpu{index}"\n'), user_mode=False)
    assert (cfg.default_time_usec, cfg.max_time_usec) == (3600 * 10**6, 2 * 86400 * 10**6)
    assert (cfg.gpu_ids, cfg.gpu_source, cfg.gpu_device) == ([0, 1], "config", "/dev/test-gpu{index}")
    with pytest.raises(ConfigError, match="default_time is longer than jobs.max_time"):
        load(write(tmp_path, '[jobs]\ndefault_time = "2h"\nmax_time = "1h"\n'), user_mode=False)
    with pytest.raises(ConfigError, match="gpu_device"):
        load(write(tmp_path, '[resources]\ngpu_device = "/tmp/x"\n'), user_mode=False)
    with pytest.raises(ConfigError, match="NVML finds no GPU"):
        load(write(tmp_path, '[resources]\ngpus = "auto"\n'), user_mode=False)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[schedular\]"):
        load(write(tmp_path, '[schedular]\npolicy = "strict"\n'), user_mode=False)


@pytest.mark.parametrize("policy", ["fifo", "First-Fit", ""])
def test_bad_policy_is_an_error(tmp_path: Path, policy: str) -> None:
    with pytest.raises(ConfigError, match="policy"):
        load(write(tmp_path, f'[scheduler]\npolicy = "{policy}"\n'), user_mode=False)


def test_bad_executor_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="executor"):
        load(write(tmp_path, '[daemon]\nexecutor = "docker"\n'), user_mode=False)


def test_cpus_the_machine_does_not_have(tmp_path: Path) -> None:
    missing = max(MACHINE_CPUS) + 1000
    with pytest.raises(ConfigError, match=str(missing)):
        load(write(tmp_path, f'[resources]\ncpus = "{missing}"\n'), user_mode=False)


def test_zero_cpus_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(write(tmp_path, "[resources]\ncpus = 0\n"), user_mode=False)


def test_negative_cpu_count_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(write(tmp_path, "[resources]\ncpus = -1\n"), user_mode=False)


def test_cpu_count_above_the_machine_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(write(tmp_path, f"[resources]\ncpus = {len(MACHINE_CPUS) + 1}\n"), user_mode=False)


def test_default_memory_follows_configured_memory(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[resources]\ncpus = 1\nmemory = "256M"\n'), user_mode=False)
    assert cfg.memory == 256 * MiB
    # min(1 GiB, memory / CPUs): a job without Memory must fit on this node.
    assert cfg.default_memory == 256 * MiB


def test_bad_memory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a size"):
        load(write(tmp_path, '[resources]\nmemory = "lots"\n'), user_mode=False)


def test_bad_duration_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        load(write(tmp_path, '[jobs]\nkill_wait = "soon"\n'), user_mode=False)


def test_bad_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schedd.toml"):
        load(write(tmp_path, "[node\nname = 1\n"), user_mode=False)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml", user_mode=False)


def test_queued_bytes_cap_and_keep_finished(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, ""), user_mode=False)
    assert cfg.max_queued_bytes_per_user == 1 << 30 and cfg.keep_finished_usec == 30 * 86_400_000_000
    cfg = load(write(tmp_path, '[jobs]\nmax_queued_bytes_per_user = "64M"\nkeep_finished = "12h"\n'), user_mode=False)
    assert cfg.max_queued_bytes_per_user == 64 << 20 and cfg.keep_finished_usec == 12 * 3_600_000_000
    for forever in ('"infinity"', '"0"', "0"):
        assert load(write(tmp_path, f"[jobs]\nkeep_finished = {forever}\n"), user_mode=False).keep_finished_usec == 0
    for bad, words in (('max_queued_bytes_per_user = "lots"', "max_queued_bytes_per_user: not a size"),
                       ("max_queued_bytes_per_user = 100", "at least 4K"),
                       ('keep_finished = "soon"', "keep_finished: not a duration"),
                       ('keep_finished = "10ms"', "at least 1s"),
                       ("keep_finished = true", "a duration like '30d'")):
        with pytest.raises(ConfigError, match=words):
            load(write(tmp_path, f"[jobs]\n{bad}\n"), user_mode=False)
