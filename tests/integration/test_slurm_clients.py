"""The real PyPI clients, unmodified, through the links, as an ordinary user: submitit and
dask-jobqueue drive schedd exactly as they drive a Slurm cluster."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import Node
from test_slurm import DONE, WORK, links, slurm, wait_state, write  # noqa: F401 (links: the fixture)

PY = "/opt/schedd/venv/bin/python"


def client(node: Node, name: str, code: str, timeout: float = 240) -> dict:
    """Run a client program as the user (links first on PATH); the JSON it prints last."""
    path = f"{WORK}/{name}.py"
    write(node, path, textwrap.dedent(code))
    r = slurm(node, PY, path, check=False, timeout=timeout)
    assert r.returncode == 0, f"{name} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr[-6000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", autouse=True)
def clients_installed():
    """The clients come with the test extra (pip install -e '.[test]'); without them this fails, never skips."""
    import importlib.util

    missing = [m for m in ("submitit", "dask_jobqueue", "distributed") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: pip install -e '.[test]' installs them")


SUBMITIT_BASIC = """
import json, sys, time
import submitit

def add(a, b):
    return a + b

def square(x):
    return x * x

def boom():
    raise ValueError("no good")

def env():
    import os
    return {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}

folder = sys.argv[1] if len(sys.argv) > 1 else "sub-%j"
ex = submitit.AutoExecutor(folder="submitit-logs/%j", cluster="slurm")
ex.update_parameters(timeout_min=5, mem_gb=0.25, cpus_per_task=1, slurm_array_parallelism=2)
out = {}
job = ex.submit(add, 2, 3)
out["result"] = job.result()
out["job_id"] = job.job_id
jobs = ex.map_array(square, range(20))
out["array_ids"] = [j.job_id for j in jobs]
out["squares"] = [j.result() for j in jobs]
bad = ex.submit(boom)
try:
    bad.result()
    out["raised"] = None
except Exception as e:
    out["raised"] = repr(e)
out["bad_id"] = bad.job_id
e = ex.submit(env).result()
out["env"] = {k: e.get(k) for k in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID")}
print(json.dumps(out))
"""


def test_submitit_result_map_array_and_exceptions(node: Node, links: str):
    out = client(node, "submitit_basic", SUBMITIT_BASIC)
    assert out["result"] == 5
    assert wait_state(node, out["job_id"], DONE) == "COMPLETED"
    assert out["squares"] == [x * x for x in range(20)]
    first = out["array_ids"][0].split("_")[0]
    assert out["array_ids"] == [f"{first}_{i}" for i in range(20)]
    assert out["raised"] and "ValueError" in out["raised"] and "no good" in out["raised"]
    assert wait_state(node, out["bad_id"], DONE) == "FAILED"
    assert out["env"]["SLURM_PROCID"] == "0" and out["env"]["SLURM_ARRAY_TASK_ID"] is None
    # the tasks' rows as sacct prints them for submitit
    r = slurm(node, "sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", first)
    rows = [line.split("|") for line in r.stdout.splitlines()[1:] if "." not in line.split("|")[0]]
    assert sorted(row[0] for row in rows) == sorted(out["array_ids"]) and {row[1] for row in rows} == {"COMPLETED"}


SUBMITIT_CANCEL = """
import json, time
import submitit

def slow():
    time.sleep(600)

ex = submitit.AutoExecutor(folder="submitit-logs/%j", cluster="slurm")
ex.update_parameters(timeout_min=20, mem_gb=0.25)
job = ex.submit(slow)
deadline = time.monotonic() + 60
while job.state != "RUNNING":
    assert time.monotonic() < deadline, job.state
    time.sleep(0.2)
job.cancel(check=True)
deadline = time.monotonic() + 60
while not job.done(force_check=True):
    assert time.monotonic() < deadline, job.state
    time.sleep(0.2)
print(json.dumps({"id": job.job_id, "state": job.state}))
"""


def test_submitit_cancel(node: Node, links: str):
    out = client(node, "submitit_cancel", SUBMITIT_CANCEL)
    assert out["state"] == "CANCELLED"
    assert node.job(int(out["id"]))["State"] == "CANCELLED"


SUBMITIT_REQUEUE = """
import json, os, time
import submitit

class Count(submitit.helpers.Checkpointable):
    def __init__(self):
        self.runs = 0

    def __call__(self):
        self.runs += 1
        if self.runs == 1:
            time.sleep(300)  # the USR2 before the limit interrupts this
        return {"runs": self.runs, "restarts": os.environ["SLURM_RESTART_COUNT"], "id": os.environ["SLURM_JOB_ID"]}

ex = submitit.AutoExecutor(folder="submitit-logs/%j", cluster="slurm")
# a 1-minute limit, USR2 55 s before it: the first run is signalled about 5 s in
ex.update_parameters(timeout_min=1, mem_gb=0.25, slurm_signal_delay_s=55)
job = ex.submit(Count())
res = job.result()
print(json.dumps({"id": job.job_id, "res": res}))
"""


def test_submitit_checkpoint_requeued_by_usr2_resumes_under_the_same_id(node: Node, links: str):
    out = client(node, "submitit_requeue", SUBMITIT_REQUEUE, timeout=180)
    assert out["res"]["runs"] == 2 and out["res"]["restarts"] == "1"
    assert out["res"]["id"] == out["id"]
    assert wait_state(node, out["id"], DONE) == "COMPLETED"
    assert node.job(int(out["id"]))["Restarts"] == 1


DASK = """
import json, time
from dask_jobqueue import SLURMCluster
from distributed import Client

cluster = SLURMCluster(cores=1, processes=1, memory="400MB", walltime="00:10:00", queue="debug", account="lab",
                       interface=None, scheduler_options={"host": "127.0.0.1"}, job_extra_directives=["--wckey=x"])
cluster.scale(jobs=2)
client = Client(cluster)
client.wait_for_workers(2, timeout=120)
ids = sorted(str(j) for j in cluster.workers)
fut = client.map(lambda x: x + 1, range(50))
total = sum(client.gather(fut))
job_ids = [w.job_id for w in cluster.workers.values()]
client.close()
cluster.close()
print(json.dumps({"total": total, "job_ids": job_ids}))
"""


def test_dask_jobqueue_scales_computes_and_cancels(node: Node, links: str):
    out = client(node, "dask_cluster", DASK, timeout=240)
    assert out["total"] == sum(range(1, 51)) and len(out["job_ids"]) == 2
    for jid in out["job_ids"]:
        j = node.wait(int(jid), timeout=60)
        assert j["State"] in ("CANCELLED", "COMPLETED"), j  # close() scancels the workers
    assert slurm(node, "squeue", "-h", "--me").stdout == ""
