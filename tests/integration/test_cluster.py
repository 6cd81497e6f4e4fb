"""The cluster layer end to end, at the library level (issue 5): real redis-server, real
nginx as the seed, and several cluster_node processes (chunk store + fetcher + Redis
directory + peer server + peer client + leases, wired as rackdiskd wires them).

What the tests count: nginx's access log (seed GETs per chunk), each node's counters
(bytes by source, lease waits and takeovers, peer failures) and the chunks each store
holds afterwards (every file re-hashed).
"""
import time
from collections import Counter

import pytest

from appliance_helpers import wait_until
from cluster_appliance_helpers import SlowRelay
from cluster_helpers import (TOKEN, LyingProxy, Node, http_get, make_www, publish, rmtree,
                             seed_gets, stored, write_list)
from servers import free_port


@pytest.fixture
def www():
    d = make_www()
    yield d
    rmtree(d)


@pytest.fixture
def nodes(tmp_path):
    made = []

    def make(name, seed_url, redis_url, **kw):
        n = Node(tmp_path / "nodes", name, seed_url, redis_url, **kw)
        made.append(n)
        return n.start()

    yield make
    for n in made:
        n.stop()


def test_second_node_reads_from_first_not_seed(tmp_path, www, nginx_factory, redis_server,
                                               nodes):
    repo, chunks = publish(tmp_path, www, "img")
    nginx = nginx_factory(repo)
    lst = write_list(tmp_path / "list", chunks)
    a = nodes("a", nginx.url, redis_server.url)
    b = nodes("b", nginx.url, redis_server.url)
    assert a.fetch(lst)["ok"] == len(chunks)
    gets_after_a = len(seed_gets(nginx))
    assert gets_after_a == len(chunks)
    res = b.fetch(lst)
    assert res["ok"] == len(chunks), res
    assert len(seed_gets(nginx)) == gets_after_a, "b went to the seed"
    st = b.stats()
    total = sum(n for _, n in chunks)
    assert st["bytes"]["peer"] == total and st["bytes"]["seed"] == 0
    assert a.stats()["server"]["bytes"] == total
    assert stored(b.store) == stored(a.store)
    assert len(stored(b.store)) == len(chunks)
    # keep-alive: a handful of connections for all the chunks
    assert st["client"]["connects"] <= 8
    peers = {p["name"]: p for p in b.cmd("peers")["nodes"]}
    assert peers["a"]["alive"] and peers["a"]["bytes"] == total
    assert peers["b"]["self"]


def test_three_cold_nodes_fetch_each_chunk_from_seed_once(tmp_path, www, nginx_factory,
                                                          redis_server, nodes):
    repo, chunks = publish(tmp_path, www, "cold", nchunks=32)
    # a slow seed so the three reads overlap on every chunk
    nginx = nginx_factory(repo, extra="limit_rate 4m;")
    lst = write_list(tmp_path / "list", chunks)
    ns = [nodes(f"n{i}", nginx.url, redis_server.url) for i in range(3)]
    for n in ns:
        n.send(f"fetch {lst} 4 30000")
    results = [n.collect(120) for n in ns]
    for r in results:
        assert r["ok"] == len(chunks), results
    per_chunk = Counter(l.split("/chunks/")[1].split()[0].split("/")[-1]
                        for l in seed_gets(nginx))
    assert len(per_chunk) == len(chunks)
    assert set(per_chunk.values()) == {1}, per_chunk
    sts = [n.stats() for n in ns]
    assert sum(s["fetches"]["seed"] for s in sts) == len(chunks)
    assert sum(s["fetches"]["peer"] for s in sts) == 2 * len(chunks)
    assert sum(s["peers"]["lease_waits"] for s in sts) >= 1
    want = stored(ns[0].store)
    assert len(want) == len(chunks)
    for n in ns[1:]:
        assert stored(n.store) == want


def test_killed_lease_holder_is_taken_over(tmp_path, www, nginx_factory, redis_server,
                                           nodes):
    repo, chunks = publish(tmp_path, www, "lease", nchunks=2, chunk_size="256K")
    slow = nginx_factory(repo, extra="limit_rate 32k;")   # a holder that will never finish
    fast = nginx_factory(repo)
    one = write_list(tmp_path / "one", chunks[:1])
    a = nodes("a", slow.url, redis_server.url, lease_ttl_ms=900)
    b = nodes("b", fast.url, redis_server.url, lease_wait_ms=8000)
    a.send(f"fetch {one} 1 60000")
    for _ in range(100):   # until a holds the lease (its seed GET then starts)
        if a.stats()["peers"]["leases_won"]:
            break
        time.sleep(0.05)
    assert a.stats()["peers"]["leases_won"] == 1
    a.kill()
    t0 = time.monotonic()
    res = b.fetch(one, threads=1, deadline_ms=20000)
    took = time.monotonic() - t0
    assert res["ok"] == 1, res
    st = b.stats()
    assert st["peers"]["lease_waits"] == 1
    assert st["peers"]["lease_takeovers"] == 1
    assert st["fetches"]["seed"] == 1
    # the lease TTL (0.9 s) bounds the wait, far below the 8 s wait bound
    assert took < 6, took


def test_peer_killed_others_fall_back(tmp_path, www, nginx_factory, redis_server, nodes):
    repo, chunks = publish(tmp_path, www, "killed", nchunks=24)
    nginx = nginx_factory(repo)
    lst = write_list(tmp_path / "list", chunks)
    # b reaches a's peer server through a relay that forwards 512 KiB/s per connection
    # (a 128 KiB chunk in a quarter second, the 24 in about 3 s on b's two threads), so
    # a dies while b still has most of the chunks to fetch.
    a_port = free_port()
    relay = SlowRelay(a_port, rate=512 * 1024).start()
    try:
        a = nodes("a", nginx.url, redis_server.url, port=a_port,
                  advertise=f"127.0.0.1:{relay.port}")
        b = nodes("b", nginx.url, redis_server.url, peer_timeout_ms=1000)
        assert a.fetch(lst)["ok"] == len(chunks)
        # b starts reading from a; a dies once b has taken a chunk from it (its
        # heartbeat still looks alive)
        b.send(f"fetch {lst} 2 20000")
        assert wait_until(lambda: b.stats()["fetches"]["peer"] >= 1, 30, 0.01), b.stats()
        a.kill()
        t0 = time.monotonic()
        res = b.collect(60)
        assert res["ok"] == len(chunks), res
        assert time.monotonic() - t0 < 15
    finally:
        relay.stop()
    st = b.stats()
    assert st["fetches"]["peer"] + st["fetches"]["seed"] == len(chunks)
    assert len(stored(b.store)) == len(chunks)
    # b fell back: the chunks a had not sent came from the seed, after a failed
    assert st["fetches"]["peer"] >= 1 and st["fetches"]["seed"] >= 1, st
    assert st["peers"]["peer_failures"] + st["peers"]["lease_waits"] >= 1, st


def test_redis_stopped_then_back(tmp_path, www, nginx_factory, redis_server, nodes):
    repo, chunks = publish(tmp_path, www, "redis", nchunks=16)
    nginx = nginx_factory(repo)
    first, second = chunks[:8], chunks[8:]
    l1 = write_list(tmp_path / "l1", first)
    l2 = write_list(tmp_path / "l2", second)
    lall = write_list(tmp_path / "all", chunks)
    a = nodes("a", nginx.url, redis_server.url)
    b = nodes("b", nginx.url, redis_server.url)
    assert a.fetch(l1)["ok"] == len(first)
    redis_server.stop()
    # reads go on from the seed, fast: every directory call fails at once
    t0 = time.monotonic()
    assert a.fetch(l2)["ok"] == len(second)
    assert b.fetch(l1)["ok"] == len(first)
    assert time.monotonic() - t0 < 15
    sb = b.stats()
    assert sb["fetches"]["seed"] == len(first)
    assert not sb["directory"]["connected"]
    assert sb["peers"]["directory_down"] >= 1
    # Redis comes back empty: the nodes re-register and re-announce their stores
    redis_server.start()
    for _ in range(100):
        if a.stats()["directory"]["connected"] and b.stats()["directory"]["connected"]:
            break
        time.sleep(0.1)
    c = nodes("c", nginx.url, redis_server.url)
    gets = len(seed_gets(nginx))
    assert c.fetch(lall)["ok"] == len(chunks)
    assert len(seed_gets(nginx)) == gets, "the directory did not recover"
    assert c.stats()["fetches"]["peer"] == len(chunks)


def test_lying_peer_detected_and_counted(tmp_path, www, nginx_factory, redis_server, nodes):
    repo, chunks = publish(tmp_path, www, "liar", nchunks=6)
    nginx = nginx_factory(repo)
    lst = write_list(tmp_path / "list", chunks)
    # a's peer server is reached through a proxy that corrupts every body
    a_port = free_port()
    proxy = LyingProxy(a_port).start()
    try:
        a = Node(tmp_path / "nodes", "a", nginx.url, redis_server.url,
                 advertise=f"127.0.0.1:{proxy.port}")
        a.port = a_port
        a.args[a.args.index("--listen") + 1] = f"127.0.0.1:{a_port}"
        try:
            a.start()
            b = nodes("b", nginx.url, redis_server.url)
            assert a.fetch(lst)["ok"] == len(chunks)
            res = b.fetch(lst)
            assert res["ok"] == len(chunks), res
            st = b.stats()
            assert st["fetches"]["seed"] == len(chunks)   # the only holder lies
            assert st["peers"]["bad_data"] >= len(chunks)
            assert st["client"]["bad_data"] >= len(chunks)
            assert proxy.requests >= len(chunks)
            assert stored(b.store) == stored(a.store)
            liar = [p for p in b.cmd("peers")["nodes"] if p["name"] == "a"][0]
            assert liar["bad_data"] >= len(chunks) and liar["ok"] == 0
        finally:
            a.stop()
    finally:
        proxy.stop()


def test_peer_server_rejects_bad_requests(tmp_path, www, nginx_factory, redis_server, nodes):
    repo, chunks = publish(tmp_path, www, "bad", nchunks=2)
    nginx = nginx_factory(repo)
    a = nodes("a", nginx.url, redis_server.url)
    assert a.fetch(write_list(tmp_path / "list", chunks))["ok"] == 2
    h = chunks[0][0]
    data = stored(a.store)[h]
    ok_status, body = http_get(a.port, f"/v1/chunks/{h}", TOKEN)
    assert ok_status == 200 and body == data
    for token, want in ((None, 401), ("wrong", 403)):
        status, body = http_get(a.port, f"/v1/chunks/{h}", token)
        assert status == want
        assert data[:64] not in body and len(body) < 200
    for path in ("/v1/chunks/xyz", f"/v1/chunks/{h[:-1]}", f"/v1/chunks/{h}0",
                 f"/v1/chunks/{h[:-1]}G", "/v1/chunks/", "/etc/passwd", f"/v1/chunks/{h}/x"):
        status, body = http_get(a.port, path, TOKEN)
        assert status == 400, path
    status, _ = http_get(a.port, "/v1/chunks/" + "0" * 64, TOKEN)
    assert status == 404
