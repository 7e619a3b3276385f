"""GPUs from a configured inventory: assigned by index, CUDA_VISIBLE_DEVICES, and a scope that
can open only its own GPUs' device nodes (DevicePolicy=closed + DeviceAllow).

No GPU here, so the test makes stand-in device nodes: character devices with NVIDIA's major
number (195) and minors no driver answers. Opening one the scope allows fails with ENXIO
("No such device or address": the cgroup let it through to a missing driver); opening one it
does not allow fails with EPERM ("Operation not permitted": the devices cgroup refused).
"""

from __future__ import annotations

import os

import pytest
from conftest import CONFIG, Node, extra_node


DEVICES = [f"/dev/schedd-test-gpu{i}" for i in range(2)]
GPU_CONFIG = CONFIG.replace('[resources]\n', '[resources]\ngpus = 2\ngpu_device = "/dev/schedd-test-gpu{index}"\n')
ALLOWED, DENIED = "No such device or address", "Operation not permitted"


@pytest.fixture(scope="module")
def gpu_node(users):
    for i, path in enumerate(DEVICES):
        if os.path.exists(path):
            os.unlink(path)
        os.mknod(path, 0o666 | 0o020000, os.makedev(195, 240 + i))
    try:
        with extra_node("gpu", GPU_CONFIG) as n:
            yield n
    finally:
        for path in DEVICES:
            if os.path.exists(path):
                os.unlink(path)


def probe(gpu: int) -> str:
    return f'head -c1 {DEVICES[gpu]} 2>&1 | sed "s/^/gpu{gpu}: /"'


def test_a_gpu_job_sees_and_opens_only_its_gpu(gpu_node: Node):
    go = "/run/schedd-test-gpu-go"
    gpu_node.run(["rm", "-f", go])
    script = (f'echo "cuda=$CUDA_VISIBLE_DEVICES"; {probe(0)}; {probe(1)}; '
              f'while [ ! -e {go} ]; do sleep 0.02; done')
    first = gpu_node.submit(["sh", "-c", script], GPUs=("u", 1))
    second = gpu_node.submit(["sh", "-c", script], GPUs=("u", 1))
    j1, j2 = gpu_node.wait(first, {"RUNNING"}), gpu_node.wait(second, {"RUNNING"})
    assert sorted([j1["AssignedGPUs"], j2["AssignedGPUs"]]) == [[0], [1]]
    unit = j1["Unit"]
    assert gpu_node.unit_property(unit, "DevicePolicy") == "closed"
    gpu = j1["AssignedGPUs"][0]
    assert f"{DEVICES[gpu]} rw" in gpu_node.unit_property(unit, "DeviceAllow")
    assert DEVICES[1 - gpu] not in gpu_node.unit_property(unit, "DeviceAllow")
    gpu_node.run(["touch", go])
    for j in (gpu_node.wait(first), gpu_node.wait(second)):
        out = gpu_node.run(["cat", j["StdoutPath"]]).stdout
        mine = j["AssignedGPUs"][0]
        assert f"cuda={mine}\n" in out
        assert f"gpu{mine}: head: cannot open '{DEVICES[mine]}' for reading: {ALLOWED}" in out
        assert f"gpu{1 - mine}: head: cannot open '{DEVICES[1 - mine]}' for reading: {DENIED}" in out


def test_a_job_without_gpus_opens_none(gpu_node: Node):
    jid = gpu_node.submit(["sh", "-c", f'echo "cuda=${{CUDA_VISIBLE_DEVICES-unset}}"; {probe(0)}; {probe(1)}'])
    j = gpu_node.wait(jid)
    out = gpu_node.run(["cat", j["StdoutPath"]]).stdout
    assert "cuda=unset" in out
    assert out.count(DENIED) == 2


def test_more_gpus_than_the_node_has_is_unsatisfiable(gpu_node: Node):
    r = gpu_node.gdbus_manager("Submit", "{'Command': <['true']>, 'GPUs': <uint32 3>}")
    assert "org.schedd.Schedd1.Error.Unsatisfiable" in r.stderr and "GPUs: asks for 3 GPUs" in r.stderr
    status = gpu_node.schedctl("status").stdout
    assert "GPU" in status
