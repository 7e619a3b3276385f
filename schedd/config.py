"""Daemon configuration: /etc/schedd/schedd.toml (or --config), defaults from the machine."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
import psutil

from schedd.protocol import parse_duration, parse_size

SYSTEM_CONFIG = Path("/etc/schedd/schedd.toml")
SYSTEM_STATE = Path("/var/lib/schedd")


class ConfigError(Exception):
    pass


def parse_id_list(value: object, what: str) -> list[int]:
    """'0-3,8' or [0, 1, 2] -> sorted unique ids."""
    if isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ConfigError(f"{what}: a list must hold non-negative integers")
        return sorted(set(value))
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a list or a string like '0-3,8'")
    ids: set[int] = set()
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                ids.update(range(lo, hi + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not an id or a range like 0-3") from None
    return sorted(ids)



@dataclass
class PeerConfig:
    name: str
    url: str
    kind: str = "schedd"  # or "slurm": a Slurm cluster through its slurmrestd (schedd.cluster.slurm)
    slurm: "SlurmPeerConfig | None" = None  # for kind = "slurm"


@dataclass
class HttpConfig:
    """[http]: off unless `listen` is set.

    token_file: the peers' token (their /api/v1/ only). admin_token_file: the operators' token,
    the only one that works the dashboard (actions, output, command lines). Off loopback, the
    dashboard and /metrics also want a read credential (the admin token or read_token_file's)
    unless `public`. allowed_hosts: more Host header names the browser side answers to.
    """

    listen: tuple[str, int] | None = None
    token_file: Path | None = None
    admin_token_file: Path | None = None
    read_token_file: Path | None = None
    public: bool = False
    allow_insecure_peers: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    heartbeat_interval_usec: int = 2_000_000
    history_interval_usec: int = 10_000_000  # the dashboard's plots: one sample per node this often, 24 h kept


# Holders of these may become root or read what is not theirs (sudo/wheel/admin: root by sudo; disk: raw
# block devices; docker/lxd/libvirt/kvm: daemons or devices that hand out root or the hardware; shadow:
# password hashes; adm/systemd-journal: every log), so a token that can name any user must not reach them.
DEFAULT_DENY_GROUPS = ("root", "sudo", "wheel", "admin", "adm", "disk", "docker", "lxd", "libvirt", "shadow",
                       "kvm", "systemd-journal")
LOGIN_DEFS = Path("/etc/login.defs")


def login_uid_range(path: Path = LOGIN_DEFS) -> tuple[int, int]:
    """UID_MIN..UID_MAX of login.defs(5): the ordinary login accounts (1000..60000 where it does not say)."""
    found = {"UID_MIN": 1000, "UID_MAX": 60000}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found["UID_MIN"], found["UID_MAX"]
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] in found and words[1].isdigit():
            found[words[0]] = int(words[1])
    return found["UID_MIN"], found["UID_MAX"]


@dataclass
class FederationConfig:
    """[federation]: whose jobs this node runs for other nodes (the peer token names the user)."""

    uid_min: int = field(default_factory=lambda: login_uid_range()[0])
    uid_max: int = field(default_factory=lambda: login_uid_range()[1])
    deny_groups: tuple[str, ...] = DEFAULT_DENY_GROUPS
    # Dynamic membership (schedd.cluster.membership): peers' URLs to announce this node to at start, and
    # the URL peers reach this node at (default: made from [http] listen).
    seeds: list[str] = field(default_factory=list)
    url: str = ""


@dataclass
class ContainerConfig:
    """[containers]: how Container jobs run (schedd.executor.container). runtime 'auto': podman where it
    is installed and the daemon runs as root; 'none': this node refuses Container."""

    runtime: str = "auto"  # auto | podman | none
    podman: str = "/usr/bin/podman"
    storage_root: str = ""  # podman --root: the local image store ('' = podman's own default)
    run_root: str = ""  # podman --runroot
    storage_driver: str = ""  # podman --storage-driver ('' = podman's: overlay; vfs where the store is on overlayfs)
    network: str = "host"  # host (what any job has) | none


@dataclass
class Config:
    node_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpu_ids: list[int] = field(default_factory=lambda: sorted(os.sched_getaffinity(0)))
    memory: int = field(default_factory=lambda: psutil.virtual_memory().total)
    gpu_ids: list[int] = field(default_factory=list)
    gpu_source: str = "none"  # none | config | nvml
    gpu_device: str = "/dev/nvidia{minor}"  # the device node of GPU {index} / {minor}
    gpu_minors: dict[int, int] = field(default_factory=dict)  # index -> device minor (NVML); default: the index
    default_memory: int = 0  # 0: min(1 GiB, memory / CPUs)
    min_memory: int = 4 << 20  # the job's supervisor needs a few MiB inside the limit
    kill_wait_usec: int = 10_000_000
    default_time_usec: int = 0  # time limit of jobs that give none; 0: none
    max_time_usec: int = 0  # the largest time limit a job may ask for; 0: no maximum
    policy: str = "backfill"
    state_dir: Path = SYSTEM_STATE
    executor: str = "auto"  # auto | systemd | plain
    max_argv_bytes: int = 1 << 20
    max_env_entries: int = 10_000
    max_pending_per_user: int = 1_000_000  # queued jobs are rows on disk (engine/loading.py): a 1M-task array fits
    max_array_tasks: int = 1_000_000  # tasks in one ArrayTasks array (Slurm's MaxArraySize); they count as jobs
    max_user_priority: int = 0  # the highest Priority an ordinary user may ask for (Slurm: users only lower)
    private_data: bool = True  # others' Command and paths read as empty (Slurm's PrivateData=jobs, narrower)
    # argv + environment bytes one user may hold in PENDING/HELD jobs: 1 GiB, a tenth of a small
    # node's memory, is far more than any real queue needs (100,000 jobs of 10 KiB) yet bounds what
    # one user can pin in the daemon (max_pending_per_user x max_argv_bytes would be ~1 TiB).
    max_queued_bytes_per_user: int = 1 << 30
    # Finished jobs are deleted from the store this long after they end (Slurm purges its
    # accounting after a set age too); 0: kept for ever.
    keep_finished_usec: int = 30 * 86_400_000_000
    finished_object_ttl_usec: int = 600_000_000  # finished jobs stay exported this long
    http: HttpConfig = field(default_factory=HttpConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    peers: list[PeerConfig] = field(default_factory=list)
    containers: ContainerConfig = field(default_factory=ContainerConfig)
    source: Path | None = None

    @property
    def federated(self) -> bool:
        """Whether this node runs the federation: it names peers or seeds, or listens with the cluster
        token (so that a newcomer can join it with nothing but its own configuration)."""
        h = self.http
        return bool(self.peers or self.federation.seeds or (h.listen is not None and h.token_file is not None))

    def __post_init__(self) -> None:
        if not self.default_memory:
            self.default_memory = min(1 << 30, self.memory // max(1, len(self.cpu_ids)))


def load(path: Path | None, user_mode: bool) -> Config:
    """Read the TOML file (absent is fine unless named explicitly) over the machine's defaults."""
    explicit = path is not None
    if path is None:
        path = Path(platformdirs.user_config_dir("schedd")) / "schedd.toml" if user_mode else SYSTEM_CONFIG
    cfg = Config()
    cfg.default_memory = 0  # worked out after [resources] is applied, unless [jobs] names it
    if user_mode:
        cfg.state_dir = Path(platformdirs.user_state_dir("schedd"))
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        data = {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg.source = path if data else None
    try:
        _apply(cfg, data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if cfg.gpu_source in ("none", "nvml"):
        _discover_gpus(cfg)
    cfg.__post_init__()
    return cfg


def _discover_gpus(cfg: Config) -> None:
    from schedd.gpus import discover

    found = discover()
    if cfg.gpu_source == "nvml" and not found:
        raise ConfigError("resources.gpus = 'auto' but NVML finds no GPU (is the NVIDIA driver loaded and "
                          "nvidia-ml-py installed?)")
    if found:
        cfg.gpu_source = "nvml"
        cfg.gpu_ids = [g.index for g in found]
        cfg.gpu_minors = {g.index: g.minor for g in found}


def _apply(cfg: Config, data: dict) -> None:
    known = {"node", "resources", "jobs", "scheduler", "daemon", "http", "peers", "federation", "containers"}
    for section in data:
        if section not in known:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(sorted(known))}")
    keys = {
        "node": {"name"}, "resources": {"cpus", "memory", "gpus", "gpu_device"},
        "jobs": {"default_memory", "kill_wait", "max_argv_bytes", "max_env_entries", "max_pending_per_user",
                 "max_array_tasks", "default_time", "max_time", "max_user_priority", "private_data", "max_queued_bytes_per_user",
                 "keep_finished"},
        "scheduler": {"policy"}, "daemon": {"state_dir", "executor"},
        "http": {"listen", "token_file", "admin_token_file", "read_token_file", "public", "allow_insecure_peers",
                 "allowed_hosts", "tls_cert", "tls_key", "tls_ca", "heartbeat_interval",
                 "history_interval"},
        "federation": {"uid_min", "uid_max", "deny_groups", "seeds", "url"},
        "containers": {"runtime", "podman", "storage_root", "run_root", "storage_driver", "network"},
    }
    for section, allowed in keys.items():
        for key in data.get(section, {}):
            if key not in allowed:
                raise ConfigError(f"unknown key {key!r} in [{section}]; known: {', '.join(sorted(allowed))}")
    node = data.get("node", {})
    if "name" in node:
        cfg.node_name = str(node["name"])
    res = data.get("resources", {})
    machine_cpus = set(os.sched_getaffinity(0))
    if "cpus" in res:
        v = res["cpus"]
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= len(machine_cpus):
                raise ConfigError(f"resources.cpus = {v}: this machine offers 1 to {len(machine_cpus)} CPUs")
            cfg.cpu_ids = sorted(machine_cpus)[:v]
        else:
            cfg.cpu_ids = parse_id_list(v, "resources.cpus")
        missing = set(cfg.cpu_ids) - machine_cpus
        if missing or not cfg.cpu_ids:
            raise ConfigError(f"resources.cpus names CPUs this machine does not offer: {sorted(missing) or 'none given'}")
    if "memory" in res:
        cfg.memory = parse_size(res["memory"])
    if "gpu_device" in res:
        v = res["gpu_device"]
        if not isinstance(v, str) or not v.startswith("/dev/") or ("{index}" not in v and "{minor}" not in v):
            raise ConfigError("resources.gpu_device must be a /dev path with {index} or {minor}, "
                              "like '/dev/nvidia{minor}'")
        cfg.gpu_device = v
    if "gpus" in res:
        v = res["gpus"]
        cfg.gpu_source = "config"
        if v == "auto":
            cfg.gpu_source = "nvml"
        elif isinstance(v, int) and not isinstance(v, bool):
            if v < 0:
                raise ConfigError(f"resources.gpus = {v}: a count must not be negative")
            cfg.gpu_ids = list(range(v))
        else:
            cfg.gpu_ids = parse_id_list(v, "resources.gpus")
    jobs = data.get("jobs", {})
    if "default_memory" in jobs:
        cfg.default_memory = parse_size(jobs["default_memory"])
    if "kill_wait" in jobs:
        cfg.kill_wait_usec = parse_duration(jobs["kill_wait"])
    for key in ("default_time", "max_time"):
        if key in jobs:
            setattr(cfg, f"{key}_usec", parse_duration(jobs[key]))
    if cfg.max_time_usec and cfg.default_time_usec > cfg.max_time_usec:
        raise ConfigError("jobs.default_time is longer than jobs.max_time")
    for key in ("max_argv_bytes", "max_env_entries", "max_pending_per_user", "max_array_tasks"):
        if key in jobs:
            setattr(cfg, key, int(jobs[key]))
    if "max_user_priority" in jobs:
        v = jobs["max_user_priority"]
        if not isinstance(v, int) or isinstance(v, bool) or not -(2**31) <= v <= 2**31 - 1:
            raise ConfigError(f"jobs.max_user_priority = {v!r}: must be an integer from {-(2**31)} to {2**31 - 1} "
                              "(a Priority, D-Bus type i)")
        cfg.max_user_priority = v
    if "private_data" in jobs:
        if not isinstance(jobs["private_data"], bool):
            raise ConfigError(f"jobs.private_data = {jobs['private_data']!r}: must be true or false")
        cfg.private_data = jobs["private_data"]
    if "max_queued_bytes_per_user" in jobs:
        try:
            cfg.max_queued_bytes_per_user = parse_size(jobs["max_queued_bytes_per_user"])
        except ValueError as e:
            raise ConfigError(f"jobs.max_queued_bytes_per_user: {e}") from None
        if cfg.max_queued_bytes_per_user < 4096:
            raise ConfigError("jobs.max_queued_bytes_per_user must be at least 4K (one job's command line)")
    if "keep_finished" in jobs:
        cfg.keep_finished_usec = parse_keep(jobs["keep_finished"])
    sched = data.get("scheduler", {})
    if "policy" in sched:
        if sched["policy"] not in ("backfill", "strict", "first-fit"):
            raise ConfigError("scheduler.policy must be 'backfill', 'strict' or 'first-fit'")
        cfg.policy = sched["policy"]
    daemon = data.get("daemon", {})
    if "state_dir" in daemon:
        cfg.state_dir = Path(daemon["state_dir"])
    if "executor" in daemon:
        if daemon["executor"] not in ("auto", "systemd", "plain"):
            raise ConfigError("daemon.executor must be 'auto', 'systemd' or 'plain'")
        cfg.executor = daemon["executor"]
    _apply_federation(cfg, data.get("federation", {}))
    _apply_containers(cfg.containers, data.get("containers", {}))
    _apply_http(cfg, data.get("http", {}), data.get("peers", []))


def _apply_containers(c: ContainerConfig, sec: dict) -> None:
    if "runtime" in sec:
        if sec["runtime"] not in ("auto", "podman", "none"):
            raise ConfigError("containers.runtime must be 'auto', 'podman' or 'none'")
        c.runtime = sec["runtime"]
    if "network" in sec:
        if sec["network"] not in ("host", "none"):
            raise ConfigError("containers.network must be 'host' or 'none'")
        c.network = sec["network"]
    if "storage_driver" in sec:
        if sec["storage_driver"] not in ("", "overlay", "vfs", "btrfs", "zfs"):
            raise ConfigError("containers.storage_driver must be overlay, vfs, btrfs or zfs (or empty)")
        c.storage_driver = sec["storage_driver"]
    for key in ("podman", "storage_root", "run_root"):
        if key in sec:
            v = sec[key]
            if not isinstance(v, str) or (v and not v.startswith("/")) or (key == "podman" and not v):
                raise ConfigError(f"containers.{key} must be an absolute path")
            setattr(c, key, v)


def _apply_federation(cfg: Config, fed: dict) -> None:
    f = cfg.federation
    for key in ("uid_min", "uid_max"):
        if key in fed:
            v = fed[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**32 - 1:
                raise ConfigError(f"federation.{key} = {v!r}: a uid from 1 to 4294967294 (root never runs "
                                  "forwarded jobs)")
            setattr(f, key, v)
    if f.uid_min > f.uid_max:
        raise ConfigError(f"federation.uid_min ({f.uid_min}) is above federation.uid_max ({f.uid_max})")
    if "deny_groups" in fed:
        v = fed["deny_groups"]
        if not isinstance(v, list) or not all(isinstance(g, str) and g for g in v):
            raise ConfigError("federation.deny_groups must be a list of group names, e.g. [\"sudo\", \"docker\"]")
        f.deny_groups = tuple(v)
    if "seeds" in fed:
        v = fed["seeds"]
        if not isinstance(v, list) or not all(isinstance(u, str) for u in v):
            raise ConfigError('federation.seeds must be a list of peer URLs, e.g. ["https://node-a:7001"]')
        f.seeds = [u.rstrip("/") for u in v]
    if "url" in fed:
        if not isinstance(fed["url"], str):
            raise ConfigError("federation.url must be this node's URL as its peers reach it")
        f.url = fed["url"].rstrip("/")


_PEER_CARGO = ("the cluster's token and every forwarded job (with its environment) in clear; use https:// "
               "(tls_cert/tls_key on that node, tls_ca here)")


def check_peer_url(url: object, where: str, allow_insecure: bool, cargo: str = _PEER_CARGO,
                   what: str = "must start with http:// or https://") -> str:
    """A peer's URL as configured or announced: http(s), a host, and https:// off loopback unless allowed
    (`cargo`: what plain http would carry in clear, and what to use instead)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where} = {url!r}: {what}")
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if not host:
        raise ConfigError(f"{where} = {url!r}: names no host")
    if url.startswith("http://") and not is_loopback_host(host) and not allow_insecure:
        raise ConfigError(f"{where} = {url!r}: plain http:// to another machine would send {cargo}, or set "
                          "[http] allow_insecure_peers = true to accept that on a network you trust")
    return url.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or the name localhost (RFC 6761)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_keep(value: object) -> int:
    """[jobs] keep_finished: a duration like '30d' or '12h' -> µs; 0, '0' or 'infinity': for ever (0)."""
    if value == 0 or (isinstance(value, str) and value.strip().lower() in ("0", "infinity", "forever")):
        return 0
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError("jobs.keep_finished must be a duration like '30d' or '12h', or 'infinity'")
    try:
        usec = parse_duration(str(value))
    except ValueError as e:
        raise ConfigError(f"jobs.keep_finished: {e}; or 'infinity' to keep finished jobs for ever") from None
    if usec < 1_000_000:
        raise ConfigError("jobs.keep_finished must be at least 1s (or 'infinity')")
    return usec


def parse_listen(value: object) -> tuple[str, int]:
    """'127.0.0.1:7001' or '[::1]:7001' -> (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"http.listen = {value!r}: expected 'host:port', e.g. '127.0.0.1:7001'")
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"http.listen = {value!r}: expected 'host:port' with a port from 1 to 65535")
    return host, int(port)


def _apply_http(cfg: Config, http: dict, peers: object) -> None:
    if "listen" in http:
        cfg.http.listen = parse_listen(http["listen"])
    for key in ("token_file", "admin_token_file", "read_token_file", "tls_cert", "tls_key", "tls_ca"):
        if key in http:
            if not isinstance(http[key], str) or not os.path.isabs(http[key]):
                raise ConfigError(f"http.{key} must be an absolute path")
            setattr(cfg.http, key, Path(http[key]))
    for key in ("public", "allow_insecure_peers"):
        if key in http:
            if not isinstance(http[key], bool):
                raise ConfigError(f"http.{key} must be true or false")
            setattr(cfg.http, key, http[key])
    if "allowed_hosts" in http:
        v = http["allowed_hosts"]
        if not isinstance(v, list) or not all(isinstance(h, str) and h and not any(c in h for c in "/: ")
                                              for h in v):
            raise ConfigError("http.allowed_hosts must be a list of host names or addresses without ports, "
                              "e.g. [\"sched.example.org\"]")
        cfg.http.allowed_hosts = [h.lower().rstrip(".") for h in v]
    if "heartbeat_interval" in http:
        cfg.http.heartbeat_interval_usec = parse_duration(http["heartbeat_interval"])
        if cfg.http.heartbeat_interval_usec < 100_000:
            raise ConfigError("http.heartbeat_interval must be at least 100ms")
    if "history_interval" in http:
        cfg.http.history_interval_usec = parse_duration(http["history_interval"])
        if not 100_000 <= cfg.http.history_interval_usec <= 3_600_000_000:
            raise ConfigError("http.history_interval must be between 100ms and 1h")
    if bool(cfg.http.tls_cert) != bool(cfg.http.tls_key):
        raise ConfigError("http.tls_cert and http.tls_key go together")
    if not isinstance(peers, list):
        raise ConfigError("peers must be an array of tables: [[peers]] name = \"b\" url = \"http://...\"")
    names = {cfg.node_name}
    for i, peer in enumerate(peers):
        if isinstance(peer, dict) and peer.get("kind", "schedd") != "schedd":
            if peer["kind"] != "slurm":
                raise ConfigError(f"peers[{i}].kind = {peer['kind']!r}: \"schedd\" (the default) or \"slurm\"")
            cfg.peers.append(_slurm_peer(i, peer, names, cfg.http.allow_insecure_peers))
            names.add(peer["name"])
            continue
        if isinstance(peer, dict) and peer.get("kind") == "schedd":
            peer = {k: v for k, v in peer.items() if k != "kind"}
        if not isinstance(peer, dict) or set(peer) != {"name", "url"}:
            raise ConfigError(f"peers[{i}] needs exactly the keys name and url")
        name, url = peer["name"], peer["url"]
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"peers[{i}].name = {name!r}: must be a non-empty name unique in the cluster")
        url = check_peer_url(url, f"peers[{i}].url", cfg.http.allow_insecure_peers)
        names.add(name)
        cfg.peers.append(PeerConfig(name, url))
    if cfg.peers and (cfg.http.listen is None or cfg.http.token_file is None):
        raise ConfigError("[[peers]] need [http] listen and token_file: peers talk to each other over HTTP")
    for i, seed in enumerate(cfg.federation.seeds):
        check_peer_url(seed, f"federation.seeds[{i}]", cfg.http.allow_insecure_peers)
    if cfg.federation.url:
        check_peer_url(cfg.federation.url, "federation.url", True)
    if cfg.federation.seeds and (cfg.http.listen is None or cfg.http.token_file is None):
        raise ConfigError("[federation] seeds need [http] listen and token_file: a node joins its cluster over "
                          "HTTP with the cluster's token")
    if cfg.federation.seeds and not cfg.federation.url and _unspecified(cfg.http.listen[0]):
        raise ConfigError(f"[federation] seeds with [http] listen on {cfg.http.listen[0]} (every address): set "
                          f"[federation] url to the URL this node's peers reach it at, e.g. \"https://node-c:7001\"")


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def read_token(path: Path, key: str = "token_file") -> str:
    """A secret of [http] `key`; refused unless only its owner can read it (mode 0600)."""
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"http.{key} {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"http.{key} {path} is mode {st.st_mode & 0o777:04o}; it must be 0600 "
                          f"(chmod 600 {path})")
    if len(text) < 16:
        raise ConfigError(f"http.{key} {path}: the token must be at least 16 characters")
    return text


# -- [[peers]] kind = "slurm" (schedd.cluster.slurm) ----------------------------------------------

SLURM_PEER_KEYS = {"name", "kind", "url", "jwt_key_file", "partition", "query_user", "token_lifetime"}
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class SlurmPeerConfig:
    """`[[peers]] kind = "slurm"`: a Slurm cluster at its slurmrestd (schedd.cluster.slurm)."""

    jwt_key_file: str
    partition: str = ""
    query_user: str = "slurm"
    token_lifetime: int = 600  # seconds a signed token is valid for


def _slurm_peer(i: int, peer: dict, taken: set[str], insecure_ok: bool) -> "PeerConfig":
    """The PeerConfig of one Slurm [[peers]] table (ConfigError with the key that is wrong)."""
    where = f"peers[{i}]"
    unknown = set(peer) - SLURM_PEER_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind = \"slurm\" "
                          f"(known: {', '.join(sorted(SLURM_PEER_KEYS))})")
    for key in ("name", "url", "jwt_key_file"):
        if key not in peer:
            raise ConfigError(f"{where}: a Slurm peer needs {key}")
    name, url, key_file = peer["name"], peer["url"], peer["jwt_key_file"]
    if not isinstance(name, str) or not _SLURM_NAME.match(name) or name in taken or name == "any":
        raise ConfigError(f"{where}.name = {name!r}: must be a name unique in the cluster (letters, digits, _.-)")
    url = check_peer_url(url, f"{where}.url", insecure_ok, "users' Slurm tokens and jobs in clear; use https://",
                         "slurmrestd's address, http:// or https://")
    if not isinstance(key_file, str) or not os.path.isabs(key_file):
        raise ConfigError(f"{where}.jwt_key_file must be an absolute path (Slurm's jwt_key, readable by root only)")
    partition = peer.get("partition", "")
    if not isinstance(partition, str) or (partition and not _SLURM_NAME.match(partition)):
        raise ConfigError(f"{where}.partition = {partition!r}: a Slurm partition name")
    query_user = peer.get("query_user", "slurm")
    if not isinstance(query_user, str) or not _SLURM_NAME.match(query_user):
        raise ConfigError(f"{where}.query_user = {query_user!r}: a user name")
    lifetime = peer.get("token_lifetime", 600)
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 60 <= lifetime <= 86400:
        raise ConfigError(f"{where}.token_lifetime = {lifetime!r}: seconds, 60 to 86400")
    return PeerConfig(name, url.rstrip("/"), kind="slurm",
                      slurm=SlurmPeerConfig(key_file, partition, query_user, lifetime))
