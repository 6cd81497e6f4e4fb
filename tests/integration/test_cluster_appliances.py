"""Clusters of real appliances: redis-server, nginx (the seed) and three rackdiskd+tgtd
pairs on loopback, each with its own portal, tgtd control port, API, peer port and state
directory. Disks are read whole through QEMU's iSCSI driver (qemu-img convert).

- a disk of an image read on A, then on B: no chunk GET reaches the seed after B starts,
  B's bytes come from the peer source, `rackdisk peers` shows A with those bytes;
- three appliances read the same cold image at once: each chunk is GET from the seed
  exactly once (nginx's access log);
- Redis stopped mid-read: the read completes from the seed with the right data, and an
  appliance started while Redis is down starts and serves.
"""
import json
import os
import subprocess

import pytest

from appliance_helpers import RACKDISKD, install_module, make_seed, wait_until
from cluster_appliance_helpers import (chunk_gets, cluster_appliance, create_disk,
                                       directory_connected, fetch_bytes, image_chunks,
                                       metrics, read_disk, read_disk_cmd, same_as_image,
                                       wait_cluster, write_token)
from servers import Redis

IMAGE_MB = 8


@pytest.fixture
def cluster(tmp_path):
    """(nginx, raws, redis, make) where make(name) builds a cluster appliance; all are
    stopped at teardown, failed test or not."""
    install_module()
    nginx, raws = make_seed(tmp_path / "seed", tags=(("deb", IMAGE_MB, 1),))
    redis = Redis(tmp_path / "redis").start()
    token = write_token(tmp_path / "token")
    apps = []

    def make(name):
        a = cluster_appliance(nginx.url, redis.url, name, token)
        apps.append(a)
        return a

    try:
        yield nginx, raws, redis, make
    finally:
        for a in apps:
            a.cleanup()
        redis.stop()
        nginx.stop()


def test_second_appliance_reads_from_the_first(cluster, tmp_path):
    nginx, raws, _, make = cluster
    repo = os.path.join(str(tmp_path / "seed"), "repo")
    a = make("a").start()
    url = create_disk(a, "va", "deb")
    read_disk(a, url, tmp_path / "a.raw")
    assert same_as_image(tmp_path / "a.raw", raws["deb"])
    hashes, chunk_size = image_chunks(repo, "deb")
    assert set(chunk_gets(nginx)) == set(hashes)
    assert fetch_bytes(a)["seed"] > 0

    seed_before = sum(chunk_gets(nginx).values())
    b = make("b").start()
    wait_cluster([a, b])
    url = create_disk(b, "vb", "deb")
    read_disk(b, url, tmp_path / "b.raw")
    assert same_as_image(tmp_path / "b.raw", raws["deb"]), "B read other bytes"

    assert sum(chunk_gets(nginx).values()) == seed_before, "B went to the seed"
    fb = fetch_bytes(b)
    assert fb["seed"] == 0
    # every distinct chunk came from A (a chunk is fetched once, then read locally)
    assert fb["peer"] == len(hashes) * chunk_size, fb
    mb = metrics(b)
    assert mb['rackdisk_peer_bytes_total{peer="a"}'] == fb["peer"]
    assert mb['rackdisk_peer_failures_total{peer="a"}'] == 0
    ma = metrics(a)
    assert ma['rackdisk_peer_server_requests_total{status="200"}'] == len(hashes)
    assert ma["rackdisk_peer_server_bytes_total"] == fb["peer"]

    p = b.cli("peers", "--json")
    assert p.returncode == 0, p.stderr
    peers = {x["name"]: x for x in json.loads(p.stdout)}
    assert set(peers) == {"a", "b"}
    assert peers["b"]["self"] and not peers["a"]["self"]
    assert peers["a"]["address"] == f"127.0.0.1:{a.peer_port}"
    assert peers["a"]["alive"] and peers["a"]["rack"] == "r1"
    assert peers["a"]["bytes"] == fb["peer"] and peers["a"]["failures"] == 0
    assert peers["a"]["id"] != peers["b"]["id"]
    p = b.cli("peers")
    assert p.returncode == 0, p.stderr
    line_a = next(l for l in p.stdout.splitlines() if l.startswith("a "))
    assert f"127.0.0.1:{a.peer_port}" in line_a and "up" in line_a
    assert "(this node)" in next(l for l in p.stdout.splitlines() if l.startswith("b "))


def test_three_cold_appliances_fetch_each_chunk_once(cluster, tmp_path):
    nginx, raws, _, make = cluster
    repo = os.path.join(str(tmp_path / "seed"), "repo")
    apps = [make(n).start() for n in ("a", "b", "c")]
    wait_cluster(apps)
    urls = [create_disk(x, f"v{x.name}", "deb") for x in apps]
    procs = [subprocess.Popen(read_disk_cmd(u, tmp_path / f"{x.name}.raw"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for x, u in zip(apps, urls)]
    try:
        for p, x in zip(procs, apps):
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err + x.log_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for x in apps:
        assert same_as_image(tmp_path / f"{x.name}.raw", raws["deb"]), x.name

    hashes, chunk_size = image_chunks(repo, "deb")
    gets = chunk_gets(nginx)
    assert set(gets) == set(hashes)
    twice = {h: n for h, n in gets.items() if n != 1}
    assert not twice, f"{len(twice)} of {len(hashes)} chunks fetched more than once"
    by = [fetch_bytes(x) for x in apps]
    assert sum(f["seed"] for f in by) == len(hashes) * chunk_size
    assert sum(f["peer"] for f in by) == 2 * len(hashes) * chunk_size


def test_redis_stopped_mid_read_reads_go_to_the_seed(cluster, tmp_path):
    nginx, raws, redis, make = cluster
    a = make("a").start()
    # A slow seed (same port, same access log) and few seed workers on B keep B's cold
    # read going long enough (several seconds) for Redis to die in its middle, even on a loaded
    # machine. nginx sends the first second's worth of a response at once, so the rate
    # must be well below the objects' sizes (up to 64 KiB) to slow them at all.
    b = make("b")
    b.extra.setdefault("seed", []).extend(["workers = 6", "readahead = 0"])
    b.write_conf()
    b.start()
    wait_cluster([a, b])
    url = create_disk(b, "vb", "deb")
    assert directory_connected(b)
    nginx.stop()
    nginx.extra = "limit_rate 32k;"
    nginx.start()
    p = subprocess.Popen(read_disk_cmd(url, tmp_path / "b.raw"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: fetch_bytes(b)["seed"] > 0, 30, 0.01)
        redis.stop()
        at_stop = fetch_bytes(b)["seed"]
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err + b.log_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert same_as_image(tmp_path / "b.raw", raws["deb"])
    assert fetch_bytes(b)["seed"] > at_stop, "the read ended before Redis stopped"
    assert wait_until(lambda: not directory_connected(b), 10)
    mb = metrics(b)
    assert mb["rackdisk_directory_errors_total"] > 0
    st, body = b.request("GET", "/api/v1/peers")
    assert st == 503 and "Redis" in body["error"]

    # An appliance started while Redis is down starts, and serves from the seed (at full
    # speed again).
    nginx.stop()
    nginx.extra = ""
    nginx.start()
    gets_before = sum(chunk_gets(nginx).values())
    c = make("c").start()
    url = create_disk(c, "vc", "deb")
    read_disk(c, url, tmp_path / "c.raw")
    assert same_as_image(tmp_path / "c.raw", raws["deb"])
    fc = fetch_bytes(c)
    assert fc["peer"] == 0 and fc["seed"] > 0
    assert sum(chunk_gets(nginx).values()) > gets_before
    assert not directory_connected(c)
    p = c.cli("peers")
    assert p.returncode != 0 and "Redis" in p.stderr


def test_cluster_config_errors_at_start(cluster, tmp_path):
    """A missing or empty token stops the start with a clear line; a wildcard listen
    without advertise is a config error (exit 2)."""
    nginx, _, redis, make = cluster
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for token, needle in ((str(empty), "empty"),
                          (str(tmp_path / "missing.token"), "No such file")):
        a = make("t")
        a.extra["cluster"] = [l for l in a.extra["cluster"] if not l.startswith("token_file")]
        a.extra["cluster"].append(f"token_file = {token}")
        a.write_conf()
        with pytest.raises(RuntimeError) as e:
            a.start(timeout=10)
        assert "[cluster] token_file" in str(e.value) and needle in str(e.value)
        assert a.proc.returncode == 1
        a.proc = None
    a = make("w")
    a.extra["cluster"] = [l for l in a.extra["cluster"] if not l.startswith("listen")]
    a.extra["cluster"].append("listen = 0.0.0.0:7480")
    a.write_conf()
    r = subprocess.run([RACKDISKD, "--check-config", "--config", a.conf],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "advertise is required" in r.stderr
