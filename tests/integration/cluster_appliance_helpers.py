"""Helpers for clusters of real appliances (rackdiskd + its own tgtd) sharing one
redis-server and one nginx seed, all on loopback: the appliance config with a [cluster]
section (appliance_helpers.Appliance takes extra config lines), Prometheus text parsing,
per-chunk seed GET counts from nginx's access log, whole-disk reads through QEMU's iSCSI
driver, and a slow TCP relay that keeps a peer transfer in flight for fault tests. Used by tests/integration/test_cluster_appliances.py and
tests/bench/cluster_appliances.py.
"""
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter

from appliance_helpers import Appliance, wait_until
from servers import free_port

TOKEN = "cluster-appliances-test-token"


def write_token(path, token=TOKEN):
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return str(path)


def cluster_appliance(seed_url, redis_url, name, token_file, extra_cluster=(), **kw):
    """An Appliance in the cluster: its peer server on its own loopback port (advertised
    as that address, derived from listen), short lease/heartbeat bounds for tests."""
    peer_port = free_port()
    cluster = [f"redis = {redis_url}", f"listen = 127.0.0.1:{peer_port}",
               f"token_file = {token_file}", "prefix = rdtest:", "lease_ttl_ms = 1500",
               "heartbeat_ttl_ms = 3000", "peer_timeout_ms = 3000", *extra_cluster]
    a = Appliance(seed_url, name=name, extra={"cluster": cluster}, **kw)
    a.peer_port = peer_port
    return a


def metrics(a):
    """{'name{labels}': value} from GET /metrics."""
    st, text = a.request("GET", "/metrics")
    assert st == 200, text
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        k, v = line.rsplit(" ", 1)
        out[k] = float(v)
    return out


def fetch_bytes(a):
    m = metrics(a)
    return {s: m.get(f'rackdisk_chunk_fetch_bytes_total{{source="{s}"}}', 0)
            for s in ("local", "peer", "seed")}


def directory_connected(a):
    return metrics(a).get("rackdisk_directory_connected") == 1


def wait_cluster(apps, timeout=15.0):
    """Every appliance connected to Redis and seeing every other one alive."""
    names = {a.name for a in apps}

    def ready():
        for a in apps:
            st, peers = a.request("GET", "/api/v1/peers")
            if st != 200 or {p["name"] for p in peers if p["alive"]} != names:
                return False
        return True
    assert wait_until(ready, timeout, 0.1), [a.request("GET", "/api/v1/peers") for a in apps]


def chunk_gets(nginx):
    """Counter: chunk hash -> GETs of it seen in nginx's access log."""
    c = Counter()
    for line in nginx.requests("/chunks/"):
        m = re.search(r'"GET /chunks/[0-9a-f]{2}/([0-9a-f]{64}) ', line)
        if m:
            c[m.group(1)] += 1
    return c


def image_chunks(repo, tag):
    """The distinct non-zero chunk hashes of a published image, in order."""
    with open(os.path.join(repo, "tags", tag)) as f:
        image_id = f.read().strip()
    with open(os.path.join(repo, "manifests", image_id + ".json")) as f:
        m = json.load(f)
    seen, out = set(), []
    for h in m["chunks"]:
        if h and h not in seen:
            seen.add(h)
            out.append(h)
    return out, m["chunk_size"]


def create_disk(a, disk, tag):
    p = a.cli("image", "pull", tag)
    assert p.returncode == 0, p.stderr
    p = a.cli("disk", "create", disk, "--image", tag)
    assert p.returncode == 0, p.stderr + a.log_text()
    return p.stdout.strip().split("\n")[-1]


def read_disk_cmd(url, out):
    return ["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)]


def read_disk(a, url, out, timeout=120):
    r = subprocess.run(read_disk_cmd(url, out), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr + a.log_text()


def same_as_image(out, raw):
    """The disk read equals the image (a disk is at least the image's size; any tail
    beyond it reads as zeros)."""
    img = open(raw, "rb").read()
    got = open(out, "rb").read()
    return got[:len(img)] == img and not any(got[len(img):])


def seconds(ms_line):
    """'lease_ttl_ms = 1500' -> 1.5"""
    return int(ms_line.split("=")[1]) / 1000.0


def cluster_setting(a, key):
    """A [cluster] setting of an appliance made by cluster_appliance(), in seconds (for
    the *_ms keys), taken from its config lines so tests bound waits by what the
    appliance was really given."""
    lines = [l for l in a.extra["cluster"] if l.split("=")[0].strip() == key]
    assert lines, key
    return seconds(lines[-1])


class SlowRelay:
    """A TCP relay in front of a peer listener that forwards the responses slowly (rate
    bytes/s, in small pieces, reading the upstream socket with a small receive buffer),
    so the peer server is still sending a chunk when a test kills it. Requests pass at
    once. down_bytes counts response bytes forwarded; every socket is closed by stop()."""

    def __init__(self, upstream_port, rate=128 * 1024, piece=4096):
        self.upstream = upstream_port
        self.rate, self.piece = rate, piece
        self.down_bytes = 0
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.socks, self.lock, self.stopping = [], threading.Lock(), False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _track(self, s):
        with self.lock:
            self.socks.append(s)

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self._track(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        u = socket.socket()
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self._track(u)
        try:
            u.settimeout(5)
            u.connect(("127.0.0.1", self.upstream))
        except OSError:
            c.close()  # upstream dead: the client sees the connection close
            return
        threading.Thread(target=self._up, args=(c, u), daemon=True).start()
        try:
            u.settimeout(30)
            while not self.stopping:
                b = u.recv(self.piece)
                if not b:
                    break
                c.sendall(b)
                with self.lock:
                    self.down_bytes += len(b)
                time.sleep(len(b) / self.rate)
        except OSError:
            pass
        for s in (c, u):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _up(self, c, u):
        try:
            c.settimeout(60)
            while not self.stopping:
                b = c.recv(65536)
                if not b:
                    break
                u.sendall(b)
        except OSError:
            pass

    def stop(self):
        self.stopping = True
        self.lsock.close()
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
