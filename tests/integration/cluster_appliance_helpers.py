"""Helpers for clusters of real appliances (rackdiskd + its own tgtd) sharing one
redis-server and one nginx seed, all on loopback: the appliance config with a [cluster]
section (appliance_helpers.Appliance takes extra config lines), Prometheus text parsing,
per-chunk seed GET counts from nginx's access log, whole-disk reads through QEMU's iSCSI
driver. Used by tests/integration/test_cluster_appliances.py and
tests/bench/cluster_appliances.py.
"""
import json
import os
import re
import subprocess
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
