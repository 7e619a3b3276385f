"""The Slurm peer's pure parts: spec -> slurmrestd submission, Slurm job -> schedd record, nodes -> load,
its [[peers]] table and its tokens; and that what slurmrestd sends is checked, never trusted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from schedd.cluster.slurm.mapping import (BadRecord, SlurmJob, Tag, exit_code, expand_path, gpus_in,
                                          jobs_and_bad_ids, jobs_of, load_of, submission)
from schedd.cluster.slurm.token import Tokens, sign
from schedd.config import ConfigError, load

TAG = Tag("a", 42, 1)


def job_rec(**kw) -> dict:
    """A job as slurmrestd v0.0.38 dumps it (the keys schedd reads; values as Slurm 22.05 sent them)."""
    rec = {"job_id": 7, "job_state": "RUNNING", "state_reason": "None", "exit_code": 0, "start_time": 1700000000,
           "end_time": 1700000300, "nodes": "vm", "user_name": "alice", "user_id": 1000,
           "standard_output": "/home/alice/slurm-%j.out", "standard_error": "", "comment": TAG.text()}
    rec.update(kw)
    return rec


def test_a_spec_becomes_a_slurm_job():
    spec = {"Command": ["sh", "-c", "echo 'a b'; exit 3"], "Name": "t", "CPUs": 4, "Memory": 3 * 2**30 + 1,
            "GPUs": 2, "RuntimeMaxUSec": 61_000_000, "Environment": ["A=1", "B=x=y"], "UserName": "alice",
            "WorkingDirectory": "/home/alice/w", "StdoutPath": "/home/alice/%j.out", "Hold": True,
            "Requeue": False}
    body = submission(spec, TAG, partition="batch", dependency=[5, 6], array=(40, 2))
    job = body["job"]
    assert job["cpus_per_task"] == 4 and job["tasks"] == 1 and job["nodes"] == 1
    assert job["memory_per_node"] == "3073M"  # MiB, rounded up
    assert job["gres"] == "gpu:2"
    assert job["time_limit"] == 2  # whole minutes, rounded up
    assert job["current_working_directory"] == "/home/alice/w"
    assert job["standard_output"] == "/home/alice/42.out"  # schedd's %j is schedd's id
    assert "standard_error" not in job  # Slurm then writes stderr with stdout, as schedd does
    assert job["environment"]["A"] == "1" and job["environment"]["B"] == "x=y"
    assert job["environment"]["SCHEDD_JOB_ID"] == "42" and job["environment"]["SCHEDD_ARRAY_TASK_ID"] == "2"
    assert job["environment"]["PATH"]
    # Slurm 22.05 reads any "requeue" key as --requeue (its value unread): Requeue=false is --no-requeue.
    assert job["hold"] is True and "requeue" not in job and job["no_requeue"] is True and job["partition"] == "batch"
    assert job["dependency"] == "afterok:5:6"
    assert job["comment"] == "schedd:a:42:1"
    assert body["script"].startswith("#!/bin/sh\n") and "exec sh -c 'echo '\"'\"'a b'\"'\"'; exit 3'" in body["script"]


def test_a_percent_in_a_path_is_not_a_slurm_pattern():
    job = submission({"Command": ["true"], "StdoutPath": "/x/100%u-%j"}, TAG)["job"]
    assert job["standard_output"] == "/x/100%%u-42"
    assert expand_path("/x/100%%u-%j", 9) == "/x/100%u-9"


def slurm_writes(pattern: str, job_id: int) -> str:
    """What slurmstepd makes of an absolute output pattern (slurmd/common/fname.c), %j and %% only."""
    if "\\" in pattern:  # remove_path_slashes: an escaping backslash is dropped, nothing expands
        out, i = [], 0
        while i < len(pattern):
            if pattern[i] == "\\":
                if pattern[i + 1:i + 2] == "\\":
                    out.append("\\")
                    i += 1
            else:
                out.append(pattern[i])
            i += 1
        return "".join(out)
    return pattern.replace("%%", "\0").replace("%j", str(job_id)).replace("\0", "%")


@pytest.mark.parametrize("path", ["/x/a\\b-%j.out", "/x/100%\\%j", "/x/\\\\n%%j", "/x/plain-%j%"])
def test_slurm_writes_the_file_schedd_names(path):
    """A backslash turns Slurm's patterns off and is dropped: the file Slurm writes is still schedd's
    path (its %j the schedd id), and the path schedd reports and reads is that file."""
    want = path.replace("%j", "42")
    job = submission({"Command": ["true"], "StdoutPath": path}, TAG)["job"]
    assert slurm_writes(job["standard_output"], 777) == want
    assert expand_path(job["standard_output"], 777) == want


@pytest.mark.parametrize("state,reason,status,want", [
    ("PENDING", "Priority", 0, ("PENDING", "", 0)),
    ("PENDING", "JobHeldUser", 0, ("HELD", "held", 0)),
    ("RUNNING", "None", 0, ("RUNNING", "", 0)),
    ("COMPLETING", "None", 0, ("RUNNING", "", 0)),
    ("SUSPENDED", "None", 0, ("SUSPENDED", "", 0)),
    ("COMPLETED", "None", 0, ("COMPLETED", "success", 0)),
    ("FAILED", "NonZeroExitCode", 3 << 8, ("FAILED", "exit-code", 3)),
    ("FAILED", "NonZeroExitCode", 9, ("FAILED", "signal", 137)),
    ("TIMEOUT", "TimeLimit", 0, ("FAILED", "timeout", 0)),
    ("OUT_OF_MEMORY", "OutOfMemory", 0, ("FAILED", "oom-kill", 0)),
    ("NODE_FAIL", "NodeDown", 0, ("FAILED", "node-failure", 0)),
    ("CANCELLED", "None", 15, ("CANCELLED", "cancelled", 143)),
    ("CANCELLED", "DependencyNeverSatisfied", 0, ("FAILED", "dependency", 0)),
    ("RESV_DEL_HOLD", "ReservationDeleted", 0, ("HELD", "held", 0)),  # its reservation went away
    # Failed by slurmctld itself (job_mgr.c: exit_code = 1), not a program killed by SIGHUP:
    ("FAILED", "JobLaunchFailure", 1, ("FAILED", "resources", 0)),
    ("FAILED", "SystemFailure", 1, ("FAILED", "resources", 0)),
    ("FAILED", "NonZeroExitCode", 1, ("FAILED", "signal", 129)),  # the program's own wait status
])
def test_slurm_states_map_onto_schedds(state, reason, status, want):
    rec = SlurmJob.of(job_rec(job_state=state, state_reason=reason, exit_code=status)).record()
    assert (rec["State"], rec["Reason"], rec["ExitCode"]) == want
    assert (rec["OriginNode"], rec["OriginId"], rec["Attempt"], rec["Id"]) == ("a", 42, 1, 7)


def test_every_state_slurm_2205_reports_is_mapped():
    """job_state_string() of Slurm 22.05 (slurm_protocol_defs.c), every word it can return."""
    words = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL",
             "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "COMPLETING", "STAGE_OUT", "CONFIGURING",
             "RESIZING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED",
             "RESV_DEL_HOLD"}
    for w in words:
        assert SlurmJob.of(job_rec(job_state=w)).record()["State"]


def test_times_are_microseconds_and_only_when_they_happened():
    pending = SlurmJob.of(job_rec(job_state="PENDING", nodes="")).record()
    assert pending["StartTime"] == 0 and pending["EndTime"] == 0  # Slurm's are forecasts then
    done = SlurmJob.of(job_rec(job_state="COMPLETED")).record()
    assert done["StartTime"] == 1700000000_000000 and done["EndTime"] == 1700000300_000000
    assert done["StdoutPath"] == done["StderrPath"] == "/home/alice/slurm-7.out"


def test_exit_status_is_a_wait_status():
    assert exit_code(0) == (0, False) and exit_code(3 << 8) == (3, False) and exit_code(9) == (137, True)


@pytest.mark.parametrize("bad", [
    {"job_state": "EXPLODED"}, {"job_id": "7"}, {"job_id": -1}, {"job_id": 1 << 40}, {"exit_code": "0"},
    {"start_time": True}, {"nodes": 5}, {"user_name": ["root"]}, {"job_state": None},
])
def test_garbage_from_slurmrestd_is_refused_record_by_record(bad):
    with pytest.raises(BadRecord):
        SlurmJob.of(job_rec(**bad))
    jobs, n_bad = jobs_of({"jobs": [job_rec(**bad), job_rec(job_id=8), "junk"]})
    assert [j.job_id for j in jobs] == [8] and n_bad == 2
    for answer in (None, [], {"jobs": {}}, {"jobs": None}):
        with pytest.raises(BadRecord):
            jobs_of(answer)


def test_a_job_without_schedds_tag_is_not_ours():
    assert SlurmJob.of(job_rec(comment="")).tag is None
    assert SlurmJob.of(job_rec(comment="schedd:a:x:1")).tag is None
    assert SlurmJob.of(job_rec(comment=None)).tag is None
    assert Tag.parse("schedd:a:42:1") == TAG
    assert Tag.parse("schedd:a:42:1\n") is None  # the whole comment or nothing
    assert Tag.parse("x schedd:a:42:1") is None


def test_requeue_is_sent_as_slurm_reads_it():
    assert submission({"Command": ["true"], "Requeue": True}, TAG)["job"]["requeue"] is True
    job = submission({"Command": ["true"], "Requeue": False}, TAG)["job"]
    assert job.get("no_requeue") is True and "requeue" not in job


def test_a_refused_record_still_names_its_job():
    """A job Slurm shows but schedd cannot read is not a job Slurm forgot."""
    jobs, bad = jobs_and_bad_ids({"jobs": [job_rec(job_id=8), job_rec(job_id=9, job_state="NEW_STATE"),
                                           {"job_id": "x"}, 5]})
    assert [j.job_id for j in jobs] == [8] and bad == [9, None, None]


def node_rec(**kw) -> dict:
    rec = {"name": "n1", "state": "mixed", "state_flags": [], "cpus": 8, "alloc_cpus": 3, "real_memory": 1000,
           "alloc_memory": 200, "gres": "gpu:a100:4(S:0-1)", "gres_used": "gpu:a100:1(IDX:0)",
           "partitions": ["batch"]}
    rec.update(kw)
    return rec


def test_nodes_are_one_big_peer():
    jobs, _ = jobs_of({"jobs": [job_rec(job_state="PENDING"), job_rec(job_id=8), job_rec(job_id=9, comment="")]})
    nodes = {"nodes": [node_rec(), node_rec(name="n2", state="idle", alloc_cpus=0, alloc_memory=0, gres="",
                                            gres_used="", partitions=["debug"]),
                       node_rec(name="n3", state="down"), node_rec(name="n4", state_flags=["DRAIN"])]}
    load = load_of(nodes, jobs)
    assert load == {"TotalCPUs": 16, "AvailableCPUs": 13, "TotalMemory": 2000 << 20, "AvailableMemory": 1800 << 20,
                    "TotalGPUs": 4, "AvailableGPUs": 3, "PendingJobs": 1, "RunningJobs": 2}
    assert load_of(nodes, jobs, "debug")["TotalCPUs"] == 8
    assert gpus_in("gpu:2,gpu:t4:1(S:0)") == 3 and gpus_in("") == 0
    with pytest.raises(BadRecord):
        load_of({"nodes": [node_rec(cpus="8")]}, [])


def test_tokens_are_hs256_as_slurm_checks_them():
    key = b"k" * 32
    tok = sign(key, "alice", 1000, 600)
    head, body, mac = tok.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(head))) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(pad(body))) == {"iat": 1000, "exp": 1600, "sun": "alice"}
    want = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(pad(mac)) == want
    now = [1000.0]
    t = Tokens(key, 600, clock=lambda: now[0])
    first = t.for_user("alice")
    now[0] = 1500
    assert t.for_user("alice") == first  # still good for over a minute
    now[0] = 1560
    assert t.for_user("alice") != first
    assert t.for_user("bob") != t.for_user("alice")


BASE = '[node]\nname = "a"\n[http]\nlisten = "127.0.0.1:7001"\ntoken_file = "/etc/schedd/t"\n'


def load_config_text(tmp_path, text: str):
    p = tmp_path / "schedd.toml"
    p.write_text(text)
    return load(p, False)


def test_a_slurm_peer_is_one_config_table(tmp_path):
    cfg = load_config_text(tmp_path, BASE + '[[peers]]\nname = "hpc"\nkind = "slurm"\nurl = "http://127.0.0.1:6820/"\n'
                                  'jwt_key_file = "/etc/schedd/slurm.key"\npartition = "batch"\n'
                                  '[[peers]]\nname = "b"\nurl = "http://127.0.0.1:7002"\n')
    hpc, b = cfg.peers
    assert (hpc.name, hpc.kind, hpc.url) == ("hpc", "slurm", "http://127.0.0.1:6820")
    assert hpc.slurm.jwt_key_file == "/etc/schedd/slurm.key" and hpc.slurm.partition == "batch"
    assert hpc.slurm.query_user == "slurm"
    assert (b.kind, b.slurm) == ("schedd", None)


@pytest.mark.parametrize("table,words", [
    ('kind = "pbs"\nname = "x"\nurl = "http://127.0.0.1:1"', "kind"),
    ('kind = "slurm"\nname = "x"\nurl = "http://127.0.0.1:1"', "jwt_key_file"),
    ('kind = "slurm"\nname = "x"\nurl = "http://127.0.0.1:1"\njwt_key_file = "rel"', "absolute"),
    ('kind = "slurm"\nname = "x"\nurl = "http://10.1.2.3:1"\njwt_key_file = "/k"', "http://"),
    ('kind = "slurm"\nname = "a"\nurl = "http://127.0.0.1:1"\njwt_key_file = "/k"', "unique"),
    ('kind = "slurm"\nname = "x"\nurl = "http://127.0.0.1:1"\njwt_key_file = "/k"\ntoken = "t"', "unknown"),
    ('kind = "slurm"\nname = "x"\nurl = "http://127.0.0.1:1"\njwt_key_file = "/k"\ntoken_lifetime = 5', "60"),
])
def test_a_wrong_slurm_peer_table_says_which_key(tmp_path, table, words):
    with pytest.raises(ConfigError, match=words):
        load_config_text(tmp_path, BASE + "[[peers]]\n" + table + "\n")


def test_the_jwt_key_is_taken_only_from_roots_own_private_file(tmp_path):
    """Whoever can read or swap the key acts as any Slurm user: it is checked on the opened file."""
    import os
    import threading

    from schedd.cluster.slurm.token import load_key

    good = tmp_path / "key"
    key = b"0123456789abcdef0123456789abcdef"
    good.write_bytes(key)
    good.chmod(0o600)
    assert load_key(str(good)) == key
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(OSError):
        load_key(str(link))  # O_NOFOLLOW: not a link to it
    for mode, owner, words in ((0o640, 0, "mode"), (0o600, 1, "uid 1")):
        bad = tmp_path / f"bad-{mode:o}-{owner}"
        bad.write_bytes(key)
        bad.chmod(mode)
        os.chown(bad, owner, 0)
        with pytest.raises(PermissionError, match=words):
            load_key(str(bad))
    short = tmp_path / "short"
    short.write_bytes(b"x" * 8)
    short.chmod(0o600)
    with pytest.raises(PermissionError, match="too short"):
        load_key(str(short))
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (1 << 17))
    huge.chmod(0o600)
    with pytest.raises(PermissionError, match="not a JWT key"):
        load_key(str(huge))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    got: list = []
    t = threading.Thread(target=lambda: got.append(pytest.raises(PermissionError, load_key, str(fifo))), daemon=True)
    t.start()
    t.join(5)
    hung = t.is_alive()
    if hung:  # let the stuck open go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
    assert not hung, "opening a FIFO in the key's place stalled the daemon"
    assert got and "regular file" in str(got[0].value)
