#!/usr/bin/python3
"""rack.py - a cluster of rackdisk appliances on one machine, built from network namespaces.

    +----------------------- rdrack-<pid>-<n>-core: bridge br0 ------------------------+
      |                |                 |                 |                  |
    seed             redis            r1a1 ...          r1i (initiators)   r2a1 ...
    10.213.0.1       10.213.0.2       10.213.1.1        10.213.1.200       10.213.2.1
    nginx :80        redis :6379      rackdiskd :7470   rdreplay,          ...
    (tc tbf uplink)                   peers :7480       qemu-img
                                      tgtd :3260

Every host is a namespace with one veth into the core namespace's bridge; all addresses
are in 10.213.0.0/16 (rack K: 10.213.K.J for appliance J, 10.213.K.200 for its
initiators), nothing is added to the machine's own namespace. The seed's uplink is shaped
with `tc qdisc tbf` (a WAN link, 200mbit by default). Each appliance runs rackdiskd with
its own tgtd (its own state directory, tgtd control port and IPC socket). With
appliance_rate (--appliance-rate), each appliance's own link is shaped too, both ways
(tbf on its eth0 for what it sends, on its bridge port for what it receives), like a
NIC of that speed. Default: unshaped (veth speed).

Which traffic that NIC carries is the frontend option (--frontend, Cluster(frontend=)):
  shared    (default) one NIC for everything: peer transfers, seed downloads, Redis and
            the iSCSI traffic to the rack's initiators all share appliance_rate;
  separate  a storage-frontend network to the hypervisors apart from the cluster network
            (like Ceph's public vs cluster networks, or a ToR link much faster than the
            inter-rack share): traffic between an appliance and an initiator host
            (10.213.K.200, any rack) is not shaped; peer, seed and Redis traffic is.
            Each shaped device gets a root `htb` qdisc (this kernel has no `prio`)
            with two classes at 100gbit, i.e. not limiting: 1:20, the default, holds
            the same tbf as "shared"; 1:10 a plain pfifo. A u32 filter (address &
            0xffff00ff == 10.213.0.200: the destination on the appliance's eth0, the
            source on its bridge port) sends initiator packets to 1:10; ARP and all
            other packets take the default class, i.e. the tbf. Cluster.link_bytes(a)
            reads the bytes each leaf carried (tc -s), so a benchmark can prove which
            traffic went through the shaper. tests/rack/peer_bench.py checks those
            counters every round and measures the split: curl of chunks from A's peer
            listener by rack 1's initiator host (frontend: veth speed) and by B (peer
            link: the rate).

Namespaces are named rdrack-<pid>-<n>-<host>, so `rack.py cleanup-stale` can remove the
ones a dead process left behind (and the processes still in them) without touching a
running harness. A Cluster is a context manager and is also closed at exit (atexit); close()
is idempotent and best effort, so a failure half way through setup still tears down.

CLI:  rack.py cleanup-stale
      rack.py up [--racks K] [--per-rack N] [--seed-rate RATE] [--no-directory]
                 [--appliance-rate RATE] [--frontend shared|separate]
                 (builds a cluster with a sample image, prints it, waits for Ctrl-C)
"""
import atexit
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.join(ROOT, "build")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

RACKDISKD = os.environ.get("RACKDISKD", os.path.join(BUILD, "rackdiskd"))
RACKDISK = os.environ.get("RACKDISK", os.path.join(BUILD, "rackdisk"))
RDREPLAY = os.environ.get("RDREPLAY", os.path.join(BUILD, "tests", "rack", "rdreplay"))
PREFIX = "rdrack-"
NET = "10.213"
SEED_ADDR = f"{NET}.0.1"
REDIS_ADDR = f"{NET}.0.2"
IQN_PREFIX = "iqn.2026-11.io.rackdisk.rack"
TOKEN = "rack-harness-cluster-token"
API_PORT, PEER_PORT, PORTAL_PORT = 7470, 7480, 3260
INITIATOR_HOST = 200  # rack K's initiator host is 10.213.K.200
FRONTENDS = ("shared", "separate")
FRONTEND_RATE = "100gbit"  # "unshaped" for frontend "separate": above any veth here

_open_clusters = []
_serial = itertools.count(1)


class RackError(RuntimeError):
    pass


def run(cmd, timeout=30, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise RackError(f"{' '.join(map(str, cmd))}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def netns_available():
    """(True, '') when this process can create namespaces, veths and a tbf qdisc."""
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("ip", "tc", "nginx", "redis-server"):
        if not shutil.which(tool):
            return False, f"{tool} not found"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        run(["ip", "-n", name, "link", "set", "p0", "up"])
        run(["tc", "-n", name, "qdisc", "add", "dev", "p0", "root", "tbf", "rate",
             "100mbit", "burst", "64kb", "latency", "50ms"])
        return True, ""
    except (RackError, OSError) as e:
        return False, str(e)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def rate_bytes(rate):
    """Bytes per second of a tc rate such as 200mbit, 1gbit, 50mbps."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)(bit|bps)", rate.lower())
    if not m:
        raise ValueError(f"bad rate {rate!r} (e.g. 200mbit, 1gbit)")
    v = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    return int(v / 8 if m.group(3) == "bit" else v)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_ns_pids(ns):
    """SIGKILLs what still runs in one of our namespaces (processes this harness started)."""
    p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                       timeout=10)
    for pid in p.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale(verbose=True):
    """Removes rdrack- namespaces and work directories whose creating process is gone."""
    p = run(["ip", "netns", "list"])
    removed = 0
    for line in p.stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-", ns)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _kill_ns_pids(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        removed += 1
        if verbose:
            print(f"removed namespace {ns}")
    for d in os.listdir("/tmp"):
        m = re.match(rf"{PREFIX}(\d+)-", d)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join("/tmp", d), ignore_errors=True)
            if verbose:
                print(f"removed /tmp/{d}")
    return removed


class Host:
    """One namespace with one address on the cluster's bridge."""

    def __init__(self, cluster, name, addr):
        self.cluster = cluster
        self.name = name
        self.ns = f"{cluster.prefix}{name}"
        self.addr = addr

    def cmd(self, *args):
        return ["ip", "netns", "exec", self.ns, *map(str, args)]

    def run(self, *args, timeout=60, check=True):
        return run(self.cmd(*args), timeout=timeout, check=check)

    def popen(self, *args, log=None, **kw):
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            p = subprocess.Popen(self.cmd(*args), stdout=kw.pop("stdout", out),
                                 stderr=kw.pop("stderr", subprocess.STDOUT if log else
                                               subprocess.DEVNULL),
                                 start_new_session=True, **kw)
        finally:
            if log:
                out.close()
        self.cluster._procs.append(p)
        return p

    def wait_tcp(self, addr, port, timeout=20.0, proc=None):
        """Polls (from inside this namespace) until something accepts on addr:port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RackError(f"process exited with {proc.returncode} before listening "
                                f"on {addr}:{port}")
            p = subprocess.run(self.cmd("bash", "-c", f"exec 3<>/dev/tcp/{addr}/{port}"),
                               capture_output=True, timeout=10)
            if p.returncode == 0:
                return
            time.sleep(0.1)
        raise RackError(f"nothing listening on {addr}:{port} after {timeout}s")


class Appliance(Host):
    """rackdiskd + its own tgtd in its own namespace."""

    def __init__(self, cluster, rack, index, control_port):
        super().__init__(cluster, f"r{rack}a{index}", f"{NET}.{rack}.{index}")
        self.rack = rack
        self.dir = os.path.join(cluster.dir, self.name)
        self.state = os.path.join(self.dir, "state")
        self.conf = os.path.join(self.dir, "rackdisk.conf")
        self.log = os.path.join(self.dir, "rackdiskd.log")
        self.control_port = control_port
        self.proc = None

    @property
    def api(self):
        return f"http://{self.addr}:{API_PORT}"

    def write_conf(self):
        c = self.cluster
        sections = {
            "node": [f"name = {self.name}", f"rack = r{self.rack}",
                     f"state_dir = {self.state}"],
            "cache": [f"size = {c.cache_size}"],
            "seed": [f"url = http://{SEED_ADDR}:80", "request_timeout_ms = 10000"],
            "iscsi": [f"portal = {self.addr}:{PORTAL_PORT}", "tgtd = spawn",
                      f"control_port = {self.control_port}", f"iqn_prefix = {IQN_PREFIX}"],
            "api": [f"listen = {self.addr}:{API_PORT}"],
        }
        if c.readahead is not None:
            sections["seed"].append(f"readahead = {c.readahead}")
        if c.directory:
            sections["cluster"] = [f"redis = redis://{REDIS_ADDR}:6379/0",
                                   f"listen = {self.addr}:{PEER_PORT}",
                                   f"advertise = {self.addr}:{PEER_PORT}",
                                   f"token_file = {c.token_file}", "prefix = rdrack:"]
        for sec, lines in c.extra_conf.items():
            sections.setdefault(sec, []).extend(lines)
        os.makedirs(self.dir, exist_ok=True)
        with open(self.conf, "w") as f:
            for sec, lines in sections.items():
                f.write(f"[{sec}]\n" + "".join(l + "\n" for l in lines) + "\n")

    def start(self, timeout=30.0):
        self.write_conf()
        self.proc = self.popen(RACKDISKD, "--config", self.conf, log=self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RackError(f"{self.name}: rackdiskd exited with {self.proc.returncode}:"
                                f"\n{self.log_text()}")
            p = self.run("curl", "-sf", "--max-time", "2", f"{self.api}/api/v1/health",
                         check=False, timeout=10)
            if p.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RackError(f"{self.name}: rackdiskd not answering:\n{self.log_text()}")
            time.sleep(0.1)

    def stop(self, timeout=20.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Nothing of rackdiskd may outlive the cluster (its tgtd, in a process group of
        # its own, dies with it: PR_SET_PDEATHSIG).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def get(self, path, timeout=30):
        p = self.run("curl", "-sS", "--fail-with-body", "--max-time", str(timeout),
                     f"{self.api}{path}", timeout=timeout + 5, check=False)
        if p.returncode:
            raise RackError(f"{self.name}: GET {path}: {p.stderr.strip()} {p.stdout[:300]}")
        return p.stdout

    def cli(self, *args, timeout=120):
        p = self.run(RACKDISK, "--api", self.api, *args, timeout=timeout, check=False)
        if p.returncode:
            raise RackError(f"{self.name}: rackdisk {' '.join(map(str, args))}: "
                            f"{p.stderr.strip()}\n{self.log_text()}")
        return p.stdout

    def create_disk(self, disk, tag):
        """Through the appliance's CLI; returns the disk's iSCSI URL."""
        self.cli("image", "pull", tag)
        return self.cli("disk", "create", disk, "--image", tag).strip().split("\n")[-1]

    def metrics(self):
        out = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def fetch_bytes(self):
        m = self.metrics()
        return {s: int(m.get(f'rackdisk_chunk_fetch_bytes_total{{source="{s}"}}', 0))
                for s in ("local", "peer", "seed")}


class Cluster:
    """The seed, Redis (when directory=True) and K racks of N appliances plus one initiator
    host per rack. repo: a published repository directory for nginx to serve."""

    def __init__(self, repo, racks=2, per_rack=1, seed_rate="200mbit", directory=True,
                 cache_size="2G", readahead=None, extra_conf=None, appliance_rate=None,
                 frontend="shared"):
        if not 1 <= racks <= 200 or not 1 <= per_rack <= 99:
            raise ValueError("racks 1..200, per_rack 1..99")
        if frontend not in FRONTENDS:
            raise ValueError(f"frontend: one of {', '.join(FRONTENDS)}")
        rate_bytes(seed_rate)
        if appliance_rate is not None:
            rate_bytes(appliance_rate)
        self.appliance_rate = appliance_rate
        self.frontend = frontend
        self.repo = os.path.abspath(repo)
        self.racks, self.per_rack = racks, per_rack
        self.seed_rate = seed_rate
        self.directory = directory
        self.cache_size = cache_size
        self.readahead = readahead
        self.extra_conf = extra_conf or {}
        self.prefix = f"{PREFIX}{os.getpid()}-{next(_serial)}-"
        self.dir = f"/tmp/{self.prefix.rstrip('-')}"
        self.token_file = os.path.join(self.dir, "token")
        self.namespaces = []
        self._procs = []
        self.core = Host(self, "core", None)
        self.seed = Host(self, "seed", SEED_ADDR)
        self.redis = Host(self, "redis", REDIS_ADDR)
        self.appliances = []
        self.initiators = {}
        control = itertools.count(101)
        for k in range(1, racks + 1):
            for j in range(1, per_rack + 1):
                self.appliances.append(Appliance(self, k, j, next(control)))
            self.initiators[k] = Host(self, f"r{k}i", f"{NET}.{k}.200")
        self.access_log = os.path.join(self.dir, "seed", "access.log")
        self.closed = False

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    def rack_appliances(self, k):
        return [a for a in self.appliances if a.rack == k]

    # ---- network -----------------------------------------------------------------------

    def _add_ns(self, host):
        run(["ip", "netns", "add", host.ns])
        self.namespaces.append(host.ns)
        run(["ip", "-n", host.ns, "link", "set", "lo", "up"])

    def _attach(self, host, port):
        """A veth from host's eth0 to a port of the core bridge."""
        self._add_ns(host)
        run(["ip", "-n", self.core.ns, "link", "add", port, "type", "veth", "peer", "name",
             "eth0", "netns", host.ns])
        run(["ip", "-n", self.core.ns, "link", "set", port, "master", "br0", "up"])
        run(["ip", "-n", host.ns, "addr", "add", f"{host.addr}/16", "dev", "eth0"])
        run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])

    @staticmethod
    def _tbf(ns, dev, rate, latency, parent=("root",)):
        # burst: 4 ms of the rate, at least 64 KiB (a veth hands tbf GSO packets of up
        # to 64 KiB; a smaller bucket would stall them).
        burst = max(64 * 1024, rate_bytes(rate) // 250)
        run(["tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, "tbf", "rate", rate,
             "burst", str(burst), "latency", latency])

    # u32 key for "an initiator host's address": 10.213.*.200, at offset 16 (destination)
    # or 12 (source) of the IPv4 header.
    _INITIATOR_KEY = "0x%02x%02x00%02x" % (*map(int, NET.split(".")), INITIATOR_HOST)

    def _shape_appliance(self, ns, dev, initiator_is):
        """Shapes dev's egress at appliance_rate. Frontend "separate": packets whose
        `initiator_is` ("dst" or "src") address is an initiator host bypass the tbf."""
        if self.frontend == "shared":
            self._tbf(ns, dev, self.appliance_rate, "50ms")
            return
        # This kernel has no prio qdisc; htb is only the classifier's holder here: both
        # classes get FRONTEND_RATE, far above what a veth moves on this machine, so the
        # one shaper is the same tbf as with "shared", under class 1:20.
        tc = ["tc", "-n", ns]
        run(tc + ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20"])
        for cls in ("1:10", "1:20"):
            run(tc + ["class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb",
                      "rate", FRONTEND_RATE, "quantum", "60000"])
        run(tc + ["qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo",
                  "limit", "1000"])
        self._tbf(ns, dev, self.appliance_rate, "50ms", parent=("parent", "1:20", "handle",
                                                              "20:"))
        run(tc + ["filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
                  "u32", "match", "u32", self._INITIATOR_KEY, "0xffff00ff", "at",
                  "16" if initiator_is == "dst" else "12", "flowid", "1:10"])

    def link_bytes(self, appliance):
        """Bytes through appliance's shaped link so far, from the qdiscs' counters:
        {"tx"|"rx": {"shaped": B, "frontend": B}}; tx = what the appliance sent (its
        eth0), rx = what it received (its bridge port). "frontend" is the unshaped
        initiator band (always 0 with frontend "shared"). {} when not shaped."""
        if not self.appliance_rate:
            return {}
        out = {}
        for way, ns, dev in (("tx", appliance.ns, "eth0"), ("rx", self.core.ns,
                                                            appliance.name)):
            qs = json.loads(run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev",
                                 dev]).stdout)
            kinds = {q["kind"]: int(q.get("bytes", 0)) for q in qs}
            out[way] = {"shaped": kinds.get("tbf", 0), "frontend": kinds.get("pfifo", 0)}
        return out

    def _network(self):
        self._add_ns(self.core)
        run(["ip", "-n", self.core.ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.core.ns, "link", "set", "br0", "up"])
        self._attach(self.seed, "seed")
        # The WAN link: the seed's egress, i.e. everything appliances download from it.
        self._tbf(self.seed.ns, "eth0", self.seed_rate, "100ms")
        if self.directory:
            self._attach(self.redis, "redis")
        for a in self.appliances:
            self._attach(a, a.name)
            if self.appliance_rate:
                # Egress on each side of the veth: what the appliance sends (its eth0)
                # and what the bridge sends it (its port in the core namespace).
                self._shape_appliance(a.ns, "eth0", "dst")
                self._shape_appliance(self.core.ns, a.name, "src")
        for h in self.initiators.values():
            self._attach(h, h.name)

    # ---- services ----------------------------------------------------------------------

    def _nginx(self):
        from appliance_helpers import servable
        d = os.path.join(self.dir, "seed")
        os.makedirs(d, exist_ok=True)
        servable(self.repo)
        conf = f"""user root;
daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{ listen {SEED_ADDR}:80; root {self.repo}; }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        p = self.seed.popen("nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"),
                            log=os.path.join(d, "nginx.out"))
        self.seed.wait_tcp(SEED_ADDR, 80, proc=p)

    def _redis(self):
        d = os.path.join(self.dir, "redis")
        os.makedirs(d, exist_ok=True)
        p = self.redis.popen("redis-server", "--port", "6379", "--bind", REDIS_ADDR,
                             "--dir", d, "--save", "", "--appendonly", "no",
                             "--protected-mode", "no", log=os.path.join(d, "redis.log"))
        self.redis.wait_tcp(REDIS_ADDR, 6379, proc=p)

    def start(self):
        _open_clusters.append(self)
        os.makedirs(self.dir, exist_ok=True)
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self._network()
        self._nginx()
        if self.directory:
            self._redis()
        for a in self.appliances:
            a.start()
        if self.directory:
            self.wait_peers()
        return self

    def wait_peers(self, timeout=30.0):
        """Every appliance sees every other one alive in the directory."""
        names = {a.name for a in self.appliances}
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all({p["name"] for p in json.loads(a.get("/api/v1/peers"))
                        if p.get("alive")} == names for a in self.appliances):
                    return
            except (RackError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise RackError("appliances do not all see each other in the directory")
            time.sleep(0.2)

    def seed_chunk_gets(self):
        """{chunk hash: GETs} from the seed's nginx access log."""
        out = {}
        try:
            with open(self.access_log) as f:
                for line in f:
                    m = re.search(r'"GET /chunks/[0-9a-f]{2}/([0-9a-f]{64}) ', line)
                    if m:
                        out[m.group(1)] = out.get(m.group(1), 0) + 1
        except FileNotFoundError:
            pass
        return out

    def close(self):
        """Stops everything and removes the namespaces; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        for a in self.appliances:
            try:
                a.stop()
            except Exception as e:  # keep tearing down
                print(f"rack: stopping {a.name}: {e}", file=sys.stderr)
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(10)
                except (ProcessLookupError, PermissionError):
                    pass
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        for ns in reversed(self.namespaces):
            _kill_ns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces = []
        if os.environ.get("RACK_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in _open_clusters:
            _open_clusters.remove(self)


@atexit.register
def _close_all():
    for c in list(_open_clusters):
        c.close()


def exit_on_sigterm():
    """SIGTERM/SIGHUP raise SystemExit, so context managers and atexit tear down."""
    def handler(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def bench_prepare(name):
    """What a benchmark on the harness does first: SIGTERM tears down, namespaces are
    available (else exit with the reason), the tgt module is installed, and namespaces a
    crashed earlier run left behind are removed."""
    exit_on_sigterm()
    ok, why = netns_available()
    if not ok:
        sys.exit(f"{name}: network namespaces unavailable: {why}")
    from appliance_helpers import install_module
    install_module()
    cleanup_stale(verbose=False)


def main():
    import argparse
    ap = argparse.ArgumentParser(description="rackdisk rack simulation (network namespaces)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cleanup-stale", help="remove rdrack- namespaces of dead processes")
    up = sub.add_parser("up", help="build a cluster with a sample image; Ctrl-C ends it")
    up.add_argument("--racks", type=int, default=2)
    up.add_argument("--per-rack", type=int, default=1)
    up.add_argument("--seed-rate", default="200mbit")
    up.add_argument("--no-directory", action="store_true")
    up.add_argument("--appliance-rate", default=None,
                    help="shape each appliance's link both ways (tc tbf), e.g. 1gbit")
    up.add_argument("--frontend", choices=FRONTENDS, default="shared",
                    help="with --appliance-rate: 'separate' leaves traffic to the "
                    "initiators unshaped (a storage-frontend network); default shared")
    up.add_argument("--size-mb", type=int, default=64)
    args = ap.parse_args()
    if args.cmd == "cleanup-stale":
        n = cleanup_stale()
        print(f"{n} stale namespace(s) removed")
        return
    exit_on_sigterm()
    import tempfile
    from appliance_helpers import SAMPLE
    work = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-up", dir="/tmp")
    try:
        raw, repo = os.path.join(work, "image.raw"), os.path.join(work, "repo")
        run(["bash", SAMPLE, raw, str(args.size_mb)], timeout=300)
        run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", "img"], timeout=300)
        with Cluster(repo, args.racks, args.per_rack, args.seed_rate,
                     not args.no_directory, appliance_rate=args.appliance_rate,
                     frontend=args.frontend) as c:
            for a in c.appliances:
                print(f"{a.name}: ns {a.ns} api {a.api} portal {a.addr}:{PORTAL_PORT}")
            for k, h in c.initiators.items():
                print(f"rack {k} initiators: ns {h.ns} ({h.addr})")
            print(f"seed: ns {c.seed.ns} http://{SEED_ADDR}/ ({args.seed_rate}); image tag img")
            if args.appliance_rate:
                print(f"appliance links shaped at {args.appliance_rate} each way; frontend "
                      f"{args.frontend}" + (" (initiator traffic unshaped)"
                                            if args.frontend == "separate" else ""))
            print("Ctrl-C to tear down")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
