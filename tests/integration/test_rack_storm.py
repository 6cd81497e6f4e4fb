"""A small boot storm on the rack harness (tests/rack/rack.py): 2 racks, one appliance
each, 2 VMs per rack replaying a boot trace at once (rdreplay --verify) from a cold
cluster. Checks that each chunk was read from the seed exactly once (the seed's nginx
access log) and that every VM read exactly the image's bytes. Plus the harness's own
contracts: teardown after a failed start, and rdreplay's trace errors.

Needs root and network namespaces; without them these tests FAIL (they are not skipped):
the storm is the test of the cluster's one-copy promise.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rack"))

import rack  # noqa: E402
import storm  # noqa: E402
from appliance_helpers import install_module  # noqa: E402


def our_namespaces(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return [l.split()[0] for l in out.splitlines() if l.startswith(prefix)]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    ok, why = rack.netns_available()
    assert ok, f"network namespaces unavailable (root, ip, tc needed): {why}"
    install_module()
    work = str(tmp_path_factory.mktemp("storm"))
    raw, repo, trace = (os.path.join(work, n) for n in ("image.raw", "repo", "boot.trace"))
    rack.run(["bash", os.path.join(rack.ROOT, "scripts", "make-sample-image.sh"), raw, "32",
              "3"], timeout=120)
    rack.run([rack.RACKDISK, "image", "publish", raw, "--repo", repo, "--name", storm.TAG,
              "--chunk-size", "256K"], timeout=120)
    rack.run([sys.executable, os.path.join(HERE, "..", "rack", "gentrace.py"), raw, trace,
              "--seed", "7"], timeout=120)
    return raw, repo, trace


def test_small_storm_one_seed_copy_and_exact_bytes(image):
    raw, repo, trace = image
    reads = storm.load_trace(trace)
    _, manifest = storm.load_manifest(repo, storm.TAG)
    touched = storm.trace_chunks(reads, manifest)
    assert touched, "the trace touches no data"

    r = storm.storm(repo, trace, raw, racks=2, vms=2, per_rack=1, directory=True,
                    seed_rate="200mbit", verify=True, timeout=60)

    assert len(r["vms"]) == 4
    for vm in r["vms"]:
        assert vm["exit"] == 0 and vm["completed"], vm
        assert vm["verified"] and vm["mismatches"] == 0, vm
        assert vm["errors"] == 0 and vm["reads"] == len(reads) == vm["trace_reads"], vm
    gets = r["seed_gets_by_chunk"]
    twice = {h: n for h, n in gets.items() if n != 1}
    assert not twice, f"chunks fetched from the seed more than once: {twice}"
    missing = set(touched) - set(gets)
    assert not missing, f"chunks the trace read never came from the seed: {missing}"
    # Rack 2 took what rack 1 fetched (or the other way round): peers served bytes.
    assert r["bytes"]["peer"] > 0, r["bytes"]
    cs, size = manifest["chunk_size"], manifest["size"]
    lens = {}
    for i, h in enumerate(manifest["chunks"]):
        if h in gets:
            lens.setdefault(h, min(cs, size - i * cs))
    assert r["bytes"]["seed"] == sum(lens.values()), (r["bytes"], len(gets))


def test_failed_start_tears_down(image):
    _, repo, _ = image
    c = rack.Cluster(repo, racks=1, per_rack=1, extra_conf={"node": ["no_such_key = 1"]})
    with pytest.raises(rack.RackError):
        with c:
            pass
    assert our_namespaces(c.prefix) == []
    assert not os.path.exists(c.dir)


def run_replay(tmp_path, text):
    """rdreplay on a trace, from the host's namespace. Its portal is on loopback, a port
    bound (not listening) for the whole run: a trace wrongly accepted makes its login
    fail there, never sends a packet to a rack address (10.213.x exists only in the
    harness's namespaces)."""
    p = tmp_path / "t.trace"
    p.write_text(text)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        return subprocess.run([rack.RDREPLAY, str(p), f"iscsi://127.0.0.1:{port}/iqn.x:y/1"],
                              capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("text,err", [
    ("0 0 1 0 512\n", ":1: not a trace"),
    ("# rackdisk-trace 2\n", "format 2"),
    ("# rackdisk-trace 1\n\n0 0 10 0 512\n1 5 9 512 x\n", ":4: expected"),
    ("# rackdisk-trace 1\n0 0 10 0 512 7\n", ":2: expected"),
    ("# rackdisk-trace 1\n0 0 10 0 512\n1 5 3 512 512\n", ":3: end before start"),
    ("# rackdisk-trace 1\n0 9 10 0 512\n1 5 30 512 512\n", ":3: reads must be sorted"),
])
def test_replayer_rejects_bad_traces(tmp_path, text, err):
    r = run_replay(tmp_path, text)
    assert r.returncode == 2 and err in r.stderr, r.stderr


def check_replay_verify(initiator, url, raw, want, tmp_path):
    """rdreplay --verify passes on the image and catches one changed byte: 16 reads of
    128 KiB, 4 in flight, so its reused read buffers are exercised; only the read that
    covers the changed byte (read 2) may mismatch. It sizes its buffer pool from the
    trace's concurrency."""
    trace = tmp_path / "verify.trace"
    trace.write_text("# rackdisk-trace 1\n" + "".join(
        f"{i} {i} {i + 4} {i << 17} {1 << 17}\n" for i in range(16)))
    bad = tmp_path / "bad.raw"
    data = bytearray(want)
    data[(2 << 17) + 5] ^= 0xff
    bad.write_bytes(bytes(data))
    for path, code, mismatches in ((raw, 0, 0), (str(bad), 1, 1)):
        p = initiator.run(rack.RDREPLAY, "--verify", path, str(trace), url, timeout=60,
                          check=False)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        # The trace allows 4 reads in flight: 4 buffers, allocated before the clock.
        assert (p.returncode, r["mismatches"], r["reads"], r["buffers"]) == (
            code, mismatches, 16, 4), (path, p.stdout, p.stderr)


def test_qemu_initiators_in_racks(image, tmp_path):
    """QEMU's iSCSI driver as the initiator inside each rack's namespace: each rack reads
    a disk of the image whole from its own appliance (rack 2's chunks come from rack 1's
    appliance), and both copies equal the image byte for byte."""
    raw, repo, _ = image
    with open(raw, "rb") as f:
        want = f.read()
    with rack.Cluster(repo, racks=2, per_rack=1) as c:
        for k in (1, 2):
            a = c.rack_appliances(k)[0]
            url = a.create_disk(f"q{k}", storm.TAG)
            out = tmp_path / f"rack{k}.raw"
            p = c.initiators[k].run("qemu-img", "convert", "-O", "raw", url, str(out),
                                    timeout=120, check=False)
            assert p.returncode == 0, f"rack {k}: {p.stderr}\n{a.log_text()}"
            assert out.read_bytes() == want, f"rack {k}: qemu-img read other bytes"
            if k == 1:
                check_replay_verify(c.initiators[1], url, raw, want, tmp_path)
        b = c.rack_appliances(2)[0].fetch_bytes()
        assert b["seed"] == 0 and b["peer"] > 0, b
