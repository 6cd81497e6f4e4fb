"""Seed readahead driven by the tgt module's FETCH places (target/fetch_proto.h): real
nginx (the seed), rackdiskd with its own tgtd, reads through QEMU's iSCSI driver.

- A cold sequential read of the whole disk makes rackdiskd read ahead (the readahead
  counter in /metrics rises), the data read equals the image, and readahead never makes
  the seed serve a chunk twice.
- Reads of scattered chunks in random order do not set off readahead storms: the seed
  serves little more than the chunks read.
"""
import json
import os
import random
import re
import shutil
import subprocess
import tempfile

import pytest

from appliance_helpers import Appliance, install_module, make_seed

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def seed():
    install_module()
    work = tempfile.mkdtemp(prefix="rdra", dir="/tmp")
    nginx = None
    try:
        nginx, raws = make_seed(work, tags=(("ra", 16, 7),), chunk_size="64K")
        repo = os.path.join(work, "repo")
        with open(os.path.join(repo, "tags", "ra")) as f:
            image_id = f.read().strip()
        with open(os.path.join(repo, "manifests", f"{image_id}.json")) as f:
            manifest = json.load(f)
        yield nginx, raws["ra"], manifest
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


def metric(app, name):
    st, text = app.request("GET", "/metrics")
    assert st == 200
    m = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return int(m.group(1))


def chunk_gets(nginx):
    """Seed requests for chunk objects, by object path (from nginx's access log)."""
    out = {}
    for line in nginx.requests("GET /chunks/"):
        path = line.split('"')[1].split()[1]
        out[path] = out.get(path, 0) + 1
    return out


def start_appliance(nginx, name):
    app = Appliance(nginx.url, name=name, extra={"iscsi": ["io_timeout_ms = 30000"]})
    app.start()
    p = app.cli("disk", "create", "d1", "--image", "ra")
    assert p.returncode == 0, p.stderr + app.log_text()
    return app


def test_sequential_cold_read_reads_ahead(seed, tmp_path):
    nginx, raw, manifest = seed
    nonzero = sum(1 for h in manifest["chunks"] if h)
    before = chunk_gets(nginx)
    app = start_appliance(nginx, "ra1")
    try:
        assert metric(app, "rackdisk_fetch_readahead_total") == 0
        out = tmp_path / "out.raw"
        # -m 1: one request at a time, strictly in order, so every miss the module sends
        # is the next chunk of one stream.
        p = subprocess.run(["qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw",
                            app.url("d1"), str(out)], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr + app.log_text()
        size = os.path.getsize(raw)
        with open(raw, "rb") as a, open(out, "rb") as b:
            assert a.read() == b.read(size), "data read through iSCSI differs from the image"
        ra = metric(app, "rackdisk_fetch_readahead_total")
        seed_fetches = metric(app, 'rackdisk_chunk_fetches_total{source="seed"}')
    finally:
        app.cleanup()
    print(f"sequential: {nonzero} non-zero chunks, readahead {ra}, seed fetches {seed_fetches}")
    # Readahead fetched a good share of the image ahead of the reader ...
    assert ra >= nonzero // 4, f"readahead {ra} of {nonzero} non-zero chunks"
    # ... and never a chunk twice: one seed GET per distinct object.
    after = chunk_gets(nginx)
    new = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert new and max(new.values()) == 1, f"objects fetched twice: {new}"
    assert seed_fetches == len(new)


def test_random_order_reads_no_readahead_storm(seed):
    nginx, raw, manifest = seed
    nonzero = [i for i, h in enumerate(manifest["chunks"]) if h]
    rng = random.Random(4)
    picked = rng.sample(nonzero, max(8, len(nonzero) // 4))
    before = chunk_gets(nginx)
    app = start_appliance(nginx, "ra2")
    try:
        cmds = []
        for i in picked:
            cmds += ["-c", f"read -q {i * CHUNK} 4096"]
        p = subprocess.run(["qemu-io", "-f", "raw", "-r", *cmds, app.url("d1")],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "error" not in p.stdout.lower(), \
            p.stdout + p.stderr + app.log_text()
        ra = metric(app, "rackdisk_fetch_readahead_total")
    finally:
        app.cleanup()
    after = chunk_gets(nginx)
    fetched = sum(v - before.get(k, 0) for k, v in after.items())
    hashes = {manifest["chunks"][i] for i in picked}
    print(f"random: {len(picked)} reads, {len(hashes)} objects, readahead {ra}, "
          f"seed GETs {fetched}")
    # A random order may look sequential now and then (a chunk right after a recent
    # one); a storm would read ahead on every access (several chunks per read).
    assert ra <= len(picked) // 4, f"readahead {ra} for {len(picked)} random reads"
    assert len(hashes) <= fetched <= len(hashes) + ra
