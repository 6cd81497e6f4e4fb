"""Seed fetches against a real nginx (issue 4, "Seed failures" at the library level).

Each test publishes a small image with `rackdisk image publish`, serves the repository
with nginx on a loopback port, and drives the fetcher through build/tests/fetchtool,
which fetches chunks into a fresh owner-mode chunk store and prints its outcomes and
counters as JSON. What a test checks is what the store holds afterwards (every stored
chunk re-hashed), the fetcher's counters, the time each fetch took against its
deadline, and nginx's access log.
"""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
from pathlib import Path

from servers import BUILD, Nginx, free_port

FETCHTOOL = os.path.join(BUILD, "tests", "fetchtool")
RACKDISK = os.path.join(BUILD, "rackdisk")
# Generous slack between a deadline and the moment a fetch returns on a loaded 2-core
# machine; the deadlines themselves are far larger than a healthy fetch needs.
MARGIN_MS = 700


@pytest.fixture
def www(tmp_path):
    """A world-readable directory for what nginx serves: its workers run as nobody and
    cannot enter pytest's private tmp_path."""
    d = tempfile.mkdtemp(prefix="rd-seed-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def publish(tmp_path, name, chunk_size="64K", nchunks=16, zero_every=4, repo=None):
    """Publishes an image of nchunks chunks (every zero_every-th one all zero) into repo
    and returns (repo_dir, manifest_path, manifest, source_bytes)."""
    cs = {"64K": 64 * 1024, "128K": 128 * 1024}[chunk_size]
    data = bytearray()
    for i in range(nchunks):
        if zero_every and i % zero_every == zero_every - 1:
            data += bytes(cs)
        else:
            data += os.urandom(cs)
    src = tmp_path / f"{name}.raw"
    src.write_bytes(bytes(data))
    repo = Path(repo) / "repo"
    subprocess.run([RACKDISK, "image", "publish", str(src), "--repo", str(repo), "--name",
                    name, "--chunk-size", chunk_size], check=True, capture_output=True,
                   timeout=60)
    image_id = (repo / "tags" / name).read_text().strip()
    mpath = repo / "manifests" / f"{image_id}.json"
    return repo, mpath, json.loads(mpath.read_text()), bytes(data)


def chunk_args(manifest):
    """HEX:LEN arguments for every non-zero chunk, in order."""
    out = []
    cs, size = manifest["chunk_size"], manifest["size"]
    for i, h in enumerate(manifest["chunks"]):
        if h is not None:
            out.append(f"{h}:{min(cs, size - i * cs)}")
    return out


def fetchtool(store, url, chunks=(), deadline_ms=10000, image=None, timeout=60, **opts):
    args = [FETCHTOOL, "--store", str(store), "--seed", url, "--deadline-ms", str(deadline_ms)]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    if image:
        args += ["--image", str(image)]
    args += list(chunks)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, no_proxy="*"))


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode in (0, 1), f"fetchtool exited {proc.returncode}: {err}"
    res = json.loads(out)
    res["rc"] = proc.returncode
    res["stderr"] = err
    return res


def run(*a, **kw):
    return finish(fetchtool(*a, **kw))


def stored_chunks(store):
    """{hash: bytes} of every chunk file in the store, each checked against its name."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(store, "chunks")):
        for f in files:
            if len(f) != 64:
                continue
            data = open(os.path.join(dirpath, f), "rb").read()
            assert hashlib.sha256(data).hexdigest() == f, f"stored chunk {f} is corrupt"
            out[f] = data
    return out


def expected_chunks(manifest, source):
    cs = manifest["chunk_size"]
    return {h: source[i * cs:(i + 1) * cs] for i, h in enumerate(manifest["chunks"]) if h}


def chunk_gets(nginx, h=""):
    return [l for l in nginx.requests("GET /chunks/") if h in l]


def test_healthy_seed_fetches_every_chunk_over_few_connections(tmp_path, www, nginx_factory):
    repo, _, m, src = publish(tmp_path, "healthy", repo=www)
    nginx = nginx_factory(repo)
    chunks = chunk_args(m)
    res = run(tmp_path / "store", nginx.url, chunks, workers=4, threads=4)
    assert res["rc"] == 0, res
    want = expected_chunks(m, src)
    assert stored_chunks(tmp_path / "store") == want
    st = res["stats"]
    assert st["fetches"]["seed"] == len(want)
    assert st["bytes"]["seed"] == sum(len(v) for v in want.values())
    assert st["failures"]["seed"] == 0 and st["bad_hash"]["seed"] == 0
    # 4 threads asked for every chunk: one GET per chunk, the rest coalesced or local.
    assert len(chunk_gets(nginx)) == len(want)
    assert st["coalesced"] + st["fetches"]["local"] == 3 * len(want)
    # Keep-alive: no more connections than workers for all the requests.
    assert st["seed_requests"] == len(want)
    assert 1 <= st["seed_connects"] <= 4


def test_sequential_image_read_uses_readahead(tmp_path, www, nginx_factory):
    repo, mpath, m, src = publish(tmp_path, "seq", repo=www, nchunks=24)
    nginx = nginx_factory(repo)
    res = run(tmp_path / "store", nginx.url, image=mpath, readahead=4, workers=4)
    assert res["rc"] == 0, res
    assert stored_chunks(tmp_path / "store") == expected_chunks(m, src)
    st = res["stats"]
    assert st["readahead"] > 0
    # Chunks fetched ahead were found present (or in flight) by the reader.
    assert st["fetches"]["local"] + st["coalesced"] > 0
    assert len(chunk_gets(nginx)) == len(expected_chunks(m, src))


def assert_within_deadline(res, deadline_ms):
    for r in res["results"]:
        assert r["ms"] < deadline_ms + MARGIN_MS, r


def test_seed_stopped_errors_within_deadline(tmp_path, www, nginx_factory):
    repo, _, m, _ = publish(tmp_path, "stopped", repo=www)
    nginx = nginx_factory(repo)
    nginx.stop()
    chunks = chunk_args(m)[:3]
    deadline = 1500
    res = run(tmp_path / "store", nginx.url, chunks, deadline_ms=deadline,
              retry_initial_ms=50, retry_max_ms=400)
    assert res["rc"] == 1
    assert all(r["rc"] == -errno.ETIMEDOUT for r in res["results"]), res["results"]
    assert_within_deadline(res, deadline)
    assert all(r["ms"] >= deadline - 50 for r in res["results"])  # it kept trying
    st = res["stats"]
    assert st["failures"]["seed"] >= 2 * len(chunks)
    assert st["retries"] >= len(chunks)
    assert st["timeouts"] == len(chunks)
    assert stored_chunks(tmp_path / "store") == {}
    assert "connection refused" in res["stderr"]


def test_slow_seed_times_out_then_succeeds_with_time(tmp_path, www, nginx_factory):
    # 128 KiB chunks of random bytes at 64 KiB/s: about 2 s per chunk.
    repo, _, m, src = publish(tmp_path, "slow", repo=www, chunk_size="128K", nchunks=2,
                              zero_every=0)
    nginx = nginx_factory(repo, extra="limit_rate 64k;")
    chunk = chunk_args(m)[:1]
    deadline = 800
    res = run(tmp_path / "store", nginx.url, chunk, deadline_ms=deadline)
    assert res["rc"] == 1
    assert res["results"][0]["rc"] == -errno.ETIMEDOUT
    assert_within_deadline(res, deadline)
    assert stored_chunks(tmp_path / "store") == {}
    # Enough time: the same slow seed delivers, and the chunk is right.
    res = run(tmp_path / "store", nginx.url, chunk, deadline_ms=15000,
              request_timeout_ms=12000)
    assert res["rc"] == 0, res
    assert res["results"][0]["ms"] > 1000  # it really was slow
    h = chunk[0].split(":")[0]
    assert stored_chunks(tmp_path / "store") == {h: expected_chunks(m, src)[h]}


def test_corrupt_objects_never_stored(tmp_path, www, nginx_factory):
    repo, _, m, src = publish(tmp_path, "corrupt", repo=www)
    served = Path(www) / "served"
    shutil.copytree(repo, served)
    hashes = [h for h in m["chunks"] if h]
    swapped, garbage, good = hashes[0], hashes[1], hashes[2]
    obj = lambda h: served / "chunks" / h[:2] / h
    # A valid object of another chunk (decompresses cleanly to the wrong bytes) ...
    obj(swapped).write_bytes(obj(hashes[3]).read_bytes())
    # ... and bytes that are no zstd frame at all.
    obj(garbage).write_bytes(os.urandom(2000))
    nginx = nginx_factory(served)
    cs = m["chunk_size"]
    deadline = 1200
    res = run(tmp_path / "store", nginx.url, [f"{h}:{cs}" for h in (swapped, garbage, good)],
              deadline_ms=deadline, retry_initial_ms=50, retry_max_ms=200)
    rcs = [r["rc"] for r in res["results"]]
    assert rcs == [-errno.ETIMEDOUT, -errno.ETIMEDOUT, 0], res
    assert_within_deadline(res, deadline)
    st = res["stats"]
    assert st["bad_hash"]["seed"] >= 4  # both retried, each time refused
    assert st["fetches"]["seed"] == 1
    assert stored_chunks(tmp_path / "store") == {good: expected_chunks(m, src)[good]}
    assert "wrong hash from " + nginx.url in res["stderr"]
    # Warnings are rate-limited, so the other kind of damage is checked on its own.
    res = run(tmp_path / "store", nginx.url, [f"{garbage}:{cs}"], deadline_ms=300)
    assert res["results"][0]["rc"] == -errno.ETIMEDOUT
    assert "corrupt from " + nginx.url in res["stderr"]
    assert garbage not in stored_chunks(tmp_path / "store")
    # Served repeatedly: the corrupt objects were asked for more than once.
    assert len(chunk_gets(nginx, swapped)) >= 2


def test_missing_object_fails_promptly(tmp_path, www, nginx_factory):
    repo, _, m, _ = publish(tmp_path, "missing", repo=www)
    h = next(h for h in m["chunks"] if h)
    os.unlink(repo / "chunks" / h[:2] / h)
    nginx = nginx_factory(repo)
    res = run(tmp_path / "store", nginx.url, [f"{h}:{m['chunk_size']}"], deadline_ms=10000)
    assert res["results"][0]["rc"] == -errno.EIO
    assert res["results"][0]["ms"] < 5000
    assert res["stats"]["not_found"] == 1
    assert len(chunk_gets(nginx, h)) == 1


def test_seed_recovering_mid_retry(tmp_path, www):
    repo, _, m, src = publish(tmp_path, "recover", repo=www)
    port = free_port()
    nginx = Nginx(repo, tmp_path / "nginx", port=port)
    chunks = chunk_args(m)[:4]
    deadline = 10000
    proc = fetchtool(tmp_path / "store", nginx.url, chunks, deadline_ms=deadline,
                     retry_initial_ms=100, retry_max_ms=500)
    try:
        time.sleep(1.0)  # several refused attempts
        assert proc.poll() is None, "fetchtool gave up before the seed came back"
        nginx.start()
        res = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        nginx.stop()
    assert res["rc"] == 0, res
    # The first fetch waited for the seed to come back; the rest found it up.
    assert res["results"][0]["ms"] >= 900, res["results"]
    assert all(r["ms"] < deadline for r in res["results"]), res["results"]
    st = res["stats"]
    assert st["failures"]["seed"] >= 1 and st["retries"] >= 1
    want = expected_chunks(m, src)
    assert stored_chunks(tmp_path / "store") == {h.split(":")[0]: want[h.split(":")[0]]
                                                 for h in chunks}


def test_concurrent_requests_make_one_get(tmp_path, www, nginx_factory):
    repo, _, m, _ = publish(tmp_path, "single", repo=www)
    # Slow enough (about 1 s for a 64 KiB chunk) that all threads overlap the fetch.
    nginx = nginx_factory(repo, extra="limit_rate 64k;")
    h = chunk_args(m)[0]
    res = run(tmp_path / "store", nginx.url, [h], threads=16, workers=8)
    assert res["rc"] == 0, res
    assert len(chunk_gets(nginx, h.split(":")[0])) == 1
    st = res["stats"]
    assert st["fetches"]["seed"] == 1
    assert st["coalesced"] + st["fetches"]["local"] == 15
    assert st["coalesced"] >= 8


class TlsNginx(Nginx):
    """nginx as above, speaking https with a certificate for 127.0.0.1."""

    def __init__(self, root, workdir, cert, key, **kw):
        super().__init__(root, workdir, **kw)
        self.cert, self.key = cert, key

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def write_conf(self):
        super().write_conf()
        path = os.path.join(self.dir, "nginx.conf")
        conf = open(path).read().replace(
            f"listen 127.0.0.1:{self.port};",
            f"listen 127.0.0.1:{self.port} ssl; ssl_certificate {self.cert}; "
            f"ssl_certificate_key {self.key};")
        with open(path, "w") as f:
            f.write(conf)


def test_https_seed_with_private_ca(tmp_path, www):
    repo, _, m, src = publish(tmp_path, "tls", repo=www)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    nginx = TlsNginx(repo, tmp_path / "nginx", cert, key)
    try:
        nginx.start()
        chunks = chunk_args(m)[:3]
        # Unknown CA: refused at every attempt, never stored.
        res = run(tmp_path / "store", nginx.url, chunks[:1], deadline_ms=600)
        assert res["results"][0]["rc"] == -errno.ETIMEDOUT
        assert "TLS verification failed" in res["stderr"]
        assert stored_chunks(tmp_path / "store") == {}
        # With the CA: fetched over one kept-alive TLS connection.
        res = run(tmp_path / "store", nginx.url, chunks, ca_file=cert, workers=1)
        assert res["rc"] == 0, res
        want = expected_chunks(m, src)
        assert stored_chunks(tmp_path / "store") == {c.split(":")[0]: want[c.split(":")[0]]
                                                     for c in chunks}
        assert res["stats"]["seed_connects"] == 1 and res["stats"]["seed_requests"] == 3
    finally:
        nginx.stop()
