"""A container image made without any network, for tests and benchmarks: a root file system of
Debian's busybox-static with its applet links, an os-release of its own and a world-writable /tmp,
as a tar for `podman import`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
OS_NAME = "schedd test image (busybox)"


def why_not() -> str | None:
    """Why a container image cannot be built and run here, or None."""
    if shutil.which("podman") is None:
        return "needs podman (and crun) for container jobs: apt-get install podman crun (scripts/setup)"
    if not BUSYBOX.exists():
        return "needs busybox-static (/bin/busybox) to build the test image"
    if _has_interpreter(BUSYBOX):
        return "/bin/busybox is dynamically linked: the test image needs busybox-static"
    return None


def _has_interpreter(path: Path) -> bool:
    """Whether an ELF (64-bit little-endian, as Debian's amd64/arm64 builds) names a dynamic loader."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))  # PT_INTERP


def storage_options(store: Path) -> tuple[str, list[str]]:
    """([containers] lines, podman's global options) for a private store at `store`: vfs where it lies
    on overlayfs (a CI container's root: overlay cannot stack on overlay), podman's default elsewhere."""
    store.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(store)], capture_output=True, text=True).stdout.strip()
    if fs == "overlayfs":
        return 'storage_driver = "vfs"\n', ["--storage-driver", "vfs"]
    return "", []


def build_rootfs_tar(dst: Path) -> Path:
    """dst/image.tar: busybox-static, one link per applet, /etc/os-release, /tmp (1777)."""
    root = dst / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":  # a link named like its target would replace the binary by a loop
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc/os-release").write_text(f'PRETTY_NAME="{OS_NAME}"\nID=schedd-test\n')
    tar = dst / "image.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    os.chmod(dst, 0o755)
    return tar
