"""Human units, the JSON job file (seed 000) and the D-Bus contract shared by daemon and clients."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from schedd import JOB_IFACE, MANAGER_IFACE
from schedd.core.model import Job, JobSpec
from schedd.protocol import (
    JOB_PROPERTIES,
    LOAD_KEYS,
    MANAGER_PROPERTIES,
    NODE_KEYS,
    SPEC_KEYS,
    format_duration,
    format_size,
    job_file_to_spec,
    node_row,
    parse_duration,
    parse_size,
)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
SEC = 1_000_000


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4G", 4 * GiB),
        ("512M", 512 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("1048576", 1048576),
        ("0", 0),
        ("1T", TiB),
        ("64K", 64 * KiB),
        ("4g", 4 * GiB),
        ("4GiB", 4 * GiB),
        ("4GB", 4 * GiB),  # powers of 1024, like systemd
        ("100b", 100),
        (" 2M ", 2 * MiB),
        ("2 M", 2 * MiB),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "G", "4X", "4 GG", "-1", "-1G", "1e3", "four", "4G4", "1.5.1G", "0x10", -5])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_size_error_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="4G"):
        parse_size("lots")


@pytest.mark.parametrize(
    "n, text",
    [(4 * GiB, "4G"), (512 * MiB, "512M"), (3 * GiB // 2, "1.5G"), (TiB, "1T"), (1000, "1000B"), (0, "0B"),
     (KiB, "1K")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [0, 1, 1023, KiB, 512 * MiB, 4 * GiB, 3 * GiB // 2, 5 * TiB])
def test_format_size_round_trips_exact_values(n: int) -> None:
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1h30m", 5400 * SEC),
        ("90min", 5400 * SEC),
        ("45s", 45 * SEC),
        ("2d", 2 * 86400 * SEC),
        ("1:30:00", 5400 * SEC),
        ("2-12:00:00", (2 * 86400 + 12 * 3600) * SEC),
        ("10:30", 630 * SEC),  # Slurm's MM:SS
        ("90", 90 * SEC),  # plain numbers are seconds
        ("1h 30min", 5400 * SEC),
        ("1.5h", 5400 * SEC),
        ("500ms", 500_000),
        ("250us", 250),
        ("1H30M", 5400 * SEC),
        ("0", 0),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "   ", "abc", "1x", "h", "-5s", "1h-30m", "1:2:3:4", "5 parsecs", "1::00"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "usec, text",
    [
        (5400 * SEC, "1h 30min"),
        (45 * SEC, "45s"),
        (2 * 86400 * SEC, "2d"),
        (500_000, "500ms"),
        (3661 * SEC, "1h 1min 1s"),
        (60 * SEC, "1min"),
    ],
)
def test_format_duration(usec: int, text: str) -> None:
    assert format_duration(usec) == text


@pytest.mark.parametrize("usec", [45 * SEC, 5400 * SEC, 3661 * SEC, 2 * 86400 * SEC])
def test_format_duration_parses_back(usec: int) -> None:
    assert parse_duration(format_duration(usec)) == usec


SEED_000_EXAMPLE = """{
  "job_id": "123",
  "command": "python script.py",
  "resources": {
    "cpu": 4,
    "memory": "8G",
    "gpu": 1
  },
  "priority": 1,
  "output": "/path/to/output.log"
}"""


def test_job_file_seed_000_example() -> None:
    spec, warnings = job_file_to_spec(json.loads(SEED_000_EXAMPLE))
    assert spec == {
        "Command": ["python", "script.py"],
        "CPUs": 4,
        "Memory": 8 * GiB,
        "GPUs": 1,
        "Priority": 1,
        "StdoutPath": "/path/to/output.log",
    }
    assert len(warnings) == 1
    assert "job_id" in warnings[0]
    assert set(spec) <= set(SPEC_KEYS)


def test_job_file_command_split_with_shlex_not_a_shell() -> None:
    spec, warnings = job_file_to_spec({"command": "sh -c 'echo \"a b\" > out; ls $HOME'"})
    assert spec["Command"] == ["sh", "-c", 'echo "a b" > out; ls $HOME']
    assert warnings == []


def test_job_file_command_list_kept_as_is() -> None:
    spec, _ = job_file_to_spec({"command": ["echo", "a b", "$X"]})
    assert spec["Command"] == ["echo", "a b", "$X"]


def test_job_file_conversions_and_aliases() -> None:
    spec, _ = job_file_to_spec({
        "command": "make -j2",
        "name": "build",
        "resources": {"cpus": 2, "mem": "512M", "gpus": 0},
        "error": "/tmp/err.log",
        "cwd": "/srv",
        "env": {"A": "1", "B": "x=y"},
        "time": "1h30m",
        "hold": True,
        "after": 7,
        "node": "any",
        "requeue": False,
    })
    assert spec == {
        "Command": ["make", "-j2"],
        "Name": "build",
        "CPUs": 2,
        "Memory": 512 * MiB,
        "GPUs": 0,
        "StderrPath": "/tmp/err.log",
        "WorkingDirectory": "/srv",
        "Environment": ["A=1", "B=x=y"],
        "RuntimeMaxUSec": 5400 * SEC,
        "Hold": True,
        "After": [7],
        "Node": "any",
        "Requeue": False,
    }


def test_job_file_accepts_camel_case_spec_keys() -> None:
    spec, _ = job_file_to_spec({"Command": ["true"], "CPUs": 3, "Memory": 1024, "StdoutPath": "/o"})
    assert spec == {"Command": ["true"], "CPUs": 3, "Memory": 1024, "StdoutPath": "/o"}


def test_job_file_unknown_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="'commandline'"):
        job_file_to_spec({"commandline": "true"})


def test_job_file_unknown_resource_is_an_error() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        job_file_to_spec({"command": "true", "resources": {"tpu": 1}})


@pytest.mark.parametrize("bad", [[], "true", None, 3])
def test_job_file_must_be_an_object(bad: object) -> None:
    with pytest.raises(ValueError, match="one JSON object"):
        job_file_to_spec(bad)


def test_job_file_resources_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="resources"):
        job_file_to_spec({"command": "true", "resources": [4]})


def test_job_file_bad_memory_raises() -> None:
    with pytest.raises(ValueError):
        job_file_to_spec({"command": "true", "resources": {"memory": "lots"}})


@pytest.mark.parametrize("n", [2**53 + 1, 2**64 - 1])
def test_parse_size_plain_bytes_exact(n: int) -> None:
    assert parse_size(str(n)) == n


@pytest.mark.parametrize("text, expected", [("2.3h", 8_280_000_000), ("1.001s", 1_001_000)])
def test_parse_duration_decimal_is_exact(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_slurm_days_hours_minutes() -> None:
    assert parse_duration("2-12:30") == ((2 * 24 + 12) * 3600 + 30 * 60) * SEC


def test_parse_array_like_slurm():
    from schedd.protocol import parse_array
    assert parse_array("1-5%2") == ([1, 2, 3, 4, 5], 2)
    assert parse_array("0,3,5-7") == ([0, 3, 5, 6, 7], 0)
    assert parse_array("0-15:4") == ([0, 4, 8, 12], 0)
    for bad in ("5-1", "a-b", "1-3%0", "1-3%x", "", "-1", "0-100000000"):
        with pytest.raises(ValueError):
            parse_array(bad)


# -- the D-Bus contract: declared once, the rest derived or checked ----------------------------

REPO = Path(__file__).resolve().parents[2]


def _members(iface) -> set[tuple]:
    """An introspected interface as comparable facts: every method, signal and property with its types."""
    return ({("method", m.name, tuple((a.name, a.signature) for a in m.in_args),
              tuple(a.signature for a in m.out_args)) for m in iface.methods}
            | {("signal", s.name, tuple(a.signature for a in s.args)) for s in iface.signals}
            | {("property", p.name, p.signature, p.access.value) for p in iface.properties})


@pytest.mark.parametrize("name", [MANAGER_IFACE, JOB_IFACE])
def test_the_shipped_introspection_xml_is_what_the_service_exports(name: str) -> None:
    """dbus/*.xml is installed for clients (/usr/share/dbus-1/interfaces): it must say what the daemon does."""
    from dbus_fast import introspection as intr

    from schedd.api.dbus.service import JobObject, ManagerObject

    service = SimpleNamespace(engine=None)
    live = (ManagerObject(service) if name == MANAGER_IFACE else JobObject(service, None)).introspect()
    shipped = intr.Node.parse((REPO / "dbus" / f"{name}.xml").read_text())
    (iface,) = [i for i in shipped.interfaces if i.name == name]
    assert _members(iface) == _members(live)


def test_the_job_and_manager_properties_are_the_contract() -> None:
    from schedd.api.dbus.service import JobObject, ManagerObject

    service = SimpleNamespace(engine=None)
    assert {p.name: p.signature for p in JobObject(service, None).introspect().properties} == JOB_PROPERTIES
    assert {p.name: p.signature for p in ManagerObject(service).introspect().properties} == MANAGER_PROPERTIES


def test_each_job_property_names_the_job_fields_it_is_computed_from() -> None:
    from schedd.api.jobview import JOB_KEYS

    fields = {f.name for f in dataclasses.fields(Job)} | {f"spec.{f.name}" for f in dataclasses.fields(JobSpec)}
    assert [k.name for k in JOB_KEYS] == list(JOB_PROPERTIES)
    for key in JOB_KEYS:
        assert key.fields and set(key.fields) <= fields, key.name
    by_name = {k.name: k.fields for k in JOB_KEYS}
    assert by_name["WaitUSec"] == ("submit_time", "start_time")
    assert by_name["RunUSec"] == ("end_time",)  # 0 until the end; a requeue writes end_time too


def test_the_load_keys_are_the_placement_load_fields() -> None:
    from schedd.core.placement import LOAD_FIELDS

    assert LOAD_FIELDS.keys() == LOAD_KEYS.keys()
    assert node_row("n", False, "", False, dict.fromkeys(LOAD_KEYS, 0), 0).keys() == NODE_KEYS.keys()
