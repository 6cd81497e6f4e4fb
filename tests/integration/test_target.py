"""The tgt module (build/bs_rackdisk.so) in a real tgtd, driven by real initiators:
qemu-img / qemu-io through QEMU's iscsi driver, and build/tests/iscsi_cmd (libiscsi) where
the exact SCSI status and sense matter. Missing chunks are served by a fake fetch server
(tgt_helpers.FetchServer) speaking rackdiskd's fetch protocol.
"""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from appliance_helpers import wait_until
from tgt_helpers import (BUILD, FetchServer, Tgtd, install_module, make_disk, make_raw,
                         qemu_img, qemu_io, short_tmpdir)

MiB = 1 << 20
ISCSI_CMD = os.path.join(BUILD, "tests", "iscsi_cmd")


@pytest.fixture(scope="module", autouse=True)
def module_installed():
    install_module()


@pytest.fixture
def work():
    d = short_tmpdir("rdt")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tgtd(work):
    t = Tgtd(os.path.join(work, "tgtd"))
    try:
        yield t.start()
    finally:
        t.cleanup()


@pytest.fixture
def servers():
    started = []
    yield started
    for s in started:
        s.stop()


def fetch_server(servers, work, raw, mode="serve", name="f.sock", store="store", delay=0.0,
                 fail_errno=5):
    fs = FetchServer(os.path.join(work, name), os.path.join(work, store), raw=raw,
                     mode=mode, delay=delay, fail_errno=fail_errno).start()
    servers.append(fs)
    return fs


def iscsi_cmd(url, *args, timeout=150):
    r = subprocess.run([ISCSI_CMD, url, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def chunk_hashes(raw, chunk=MiB):
    data = read_file(raw)
    return [hashlib.sha256(data[o:o + chunk]).hexdigest() for o in range(0, len(data), chunk)]


def test_convert_cold_and_warm_equals_source(tgtd, work, servers):
    raw = make_raw(os.path.join(work, "img.raw"), 8 * MiB + 64 * 1024, zero_chunks={3})
    info = make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"),
                     cache="even", socket_path=os.path.join(work, "f.sock"))
    fs = fetch_server(servers, work, raw)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    uncached = info["nchunks"] - info["cached"] - info["zero"]
    assert uncached > 0

    out = os.path.join(work, "cold.raw")
    qemu_img("convert", "-f", "raw", "-O", "raw", url, out)
    assert read_file(out) == read_file(raw)
    assert fs.counts["FETCH"] == uncached  # each missing chunk fetched once

    out = os.path.join(work, "warm.raw")
    qemu_img("convert", "-f", "raw", "-O", "raw", url, out)
    assert read_file(out) == read_file(raw)
    assert fs.counts["FETCH"] == uncached  # warm: nothing fetched again


def test_map_and_convert_on_partly_cached_written_disk(tgtd, work, servers):
    """GET LBA STATUS must never report a range deallocated while it reads as data: an
    unfetched image chunk is mapped. qemu-img map's zero ranges must read as zeros, and
    qemu-img convert (which skips them) must give exactly the expected bytes."""
    raw = make_raw(os.path.join(work, "img.raw"), 8 * MiB, seed=7, zero_chunks={2})
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="even",
              socket_path=os.path.join(work, "f.sock"))
    fs = fetch_server(servers, work, raw)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    expected = bytearray(read_file(raw))

    # A write into an unfetched chunk, an UNMAP in a cached one, write-zeroes without
    # unmap in another, and data written into the all-zero chunk.
    qemu_io(url, "write -P 0x5a 1572864 65536")
    expected[1572864:1572864 + 65536] = b"\x5a" * 65536
    qemu_io(url, "discard 4194304 524288")
    expected[4 * MiB:4 * MiB + 524288] = bytes(524288)
    qemu_io(url, "write -z 6291456 65536")
    expected[6 * MiB:6 * MiB + 65536] = bytes(65536)
    qemu_io(url, "write -P 0x33 2097152 4096")
    expected[2 * MiB:2 * MiB + 4096] = b"\x33" * 4096

    fetches = fs.counts["FETCH"]
    m = json.loads(qemu_img("map", "--output=json", "-f", "raw", url).stdout)
    assert fs.counts["FETCH"] == fetches  # the map comes from metadata, not reads
    zero_bytes = 0
    for e in m:
        s, n = e["start"], e["length"]
        if e["zero"] or not e["data"]:
            assert expected[s:s + n] == bytes(n), f"map says zero at {s}+{n}, data there"
            zero_bytes += n
    # Thin provisioning is really reported: the zero chunk and the unmapped range show.
    assert zero_bytes >= MiB
    # Chunk 3 is unfetched and never read: it must be reported as data.
    assert any(e["data"] and e["start"] <= 3 * MiB < e["start"] + e["length"] for e in m)

    out = os.path.join(work, "out.raw")
    qemu_img("convert", "-f", "raw", "-O", "raw", url, out)
    assert read_file(out) == bytes(expected)


def test_writes_persist_across_tgtd_restart(work, servers):
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=3)
    disk = os.path.join(work, "disk")
    make_disk(raw, disk, os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "f.sock"))
    fetch_server(servers, work, raw)
    t = Tgtd(os.path.join(work, "tgtd")).start()
    try:
        url = t.add_lun(1, disk)
        qemu_io(url, "write -P 0x61 0 65536", "write -P 0x62 3145728 8192")
        t.stop()
        t.start()
        url = t.add_lun(1, disk)
        qemu_io(url, "read -P 0x61 0 65536", "read -P 0x62 3145728 8192")
        out = os.path.join(work, "out.raw")
        qemu_img("convert", "-f", "raw", "-O", "raw", url, out)
        exp = bytearray(read_file(raw))
        exp[0:65536] = b"\x61" * 65536
        exp[3 * MiB:3 * MiB + 8192] = b"\x62" * 8192
        assert read_file(out) == bytes(exp)
    finally:
        t.cleanup()


def test_fua_and_synced_writes_survive_sigkill(work, servers):
    """iscsi_cmd sends exactly one command (no flush at logout, unlike qemu-io)."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=4)
    disk = os.path.join(work, "disk")
    make_disk(raw, disk, os.path.join(work, "store"), cache="all")
    t = Tgtd(os.path.join(work, "tgtd")).start()
    try:
        url = t.add_lun(1, disk)
        assert iscsi_cmd(url, "write", 0, 128, 0x11, "fua")["status"] == "GOOD"
        assert iscsi_cmd(url, "write", 4096, 16, 0x22)["status"] == "GOOD"
        assert iscsi_cmd(url, "sync", 0, 0)["status"] == "GOOD"
        t.kill()
        t.start()
        url = t.add_lun(1, disk)
        r = iscsi_cmd(url, "read", 0, 128)
        assert r["sha256"] == hashlib.sha256(b"\x11" * 65536).hexdigest()
        r = iscsi_cmd(url, "read", 4096, 16)
        assert r["sha256"] == hashlib.sha256(b"\x22" * 8192).hexdigest()
    finally:
        t.cleanup()


# tgt's caching mode page (sbc.c) with WCE (byte 2, 0x04) cleared, as an initiator's MODE
# SELECT would leave it.
WCE_OFF = "mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"


def test_write_cache_off_makes_every_write_durable(work, servers):
    """With the write cache off (WCE=0), a WRITE, an UNMAP and a WRITE SAME with its UNMAP
    bit are each durable when acknowledged, with no FUA and no SYNCHRONIZE CACHE: each
    survives SIGKILL of tgtd straight after it (one command per kill, as a later durable
    command would flush an earlier one's map update too). The image's bytes under each
    range are not zero, so a lost UNMAP reads as the image."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=12)
    image = read_file(raw)
    assert image[MiB:3 * MiB].count(0) < MiB, "the image must not be zeros here"
    disk = os.path.join(work, "disk")
    make_disk(raw, disk, os.path.join(work, "store"), cache="all")
    blocks = MiB // 512
    zeros = hashlib.sha256(bytes(MiB)).hexdigest()
    steps = (
        (("write", 0, 128, 0x33), 0, 128, hashlib.sha256(b"\x33" * 65536).hexdigest()),
        (("unmap", blocks, blocks), blocks, blocks, zeros),
        (("writesame", 2 * blocks, blocks, 0, "unmap"), 2 * blocks, blocks, zeros),
    )
    t = Tgtd(os.path.join(work, "tgtd")).start()
    try:
        url = t.add_lun(1, disk, params=WCE_OFF)
        for cmd, lba, n, want in steps:
            r = iscsi_cmd(url, *cmd)
            assert r["status"] == "GOOD", (cmd, r)
            t.kill()
            t.start()
            url = t.add_lun(1, disk, params=WCE_OFF)
            assert iscsi_cmd(url, "read", lba, n)["sha256"] == want, cmd
        r = iscsi_cmd(url, "read", 3 * blocks, blocks)
        assert r["sha256"] == hashlib.sha256(image[3 * MiB:]).hexdigest()
    finally:
        t.cleanup()


def test_compare_and_write_and_orwrite(tgtd, work):
    raw = make_raw(os.path.join(work, "img.raw"), 2 * MiB, seed=5)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    assert iscsi_cmd(url, "write", 0, 1, 0xAA)["status"] == "GOOD"
    assert iscsi_cmd(url, "write", 1, 1, 0xBB)["status"] == "GOOD"
    # Compare fails at the second block: MISCOMPARE, INFORMATION = byte offset 512.
    r = iscsi_cmd(url, "caw", 0, 2, 0xAA, 0xCC)
    assert (r["status"], r["key"], r["asc"], r["info"]) == ("CHECK_CONDITION", 0x0E, 0x1D, 512)
    r = iscsi_cmd(url, "read", 0, 2)
    assert r["sha256"] == hashlib.sha256(b"\xAA" * 512 + b"\xBB" * 512).hexdigest()
    # Matching compare: the write happens.
    assert iscsi_cmd(url, "caw", 0, 1, 0xAA, 0xCC)["status"] == "GOOD"
    assert iscsi_cmd(url, "read", 0, 1)["sha256"] == hashlib.sha256(b"\xCC" * 512).hexdigest()
    # ORWRITE: 0xCC | 0x03 = 0xCF.
    assert iscsi_cmd(url, "orwrite", 0, 1, 0x03)["status"] == "GOOD"
    assert iscsi_cmd(url, "read", 0, 1)["sha256"] == hashlib.sha256(b"\xCF" * 512).hexdigest()


def verify10(lba, blocks, bytchk=1):
    """A VERIFY(10) CDB in hex, BYTCHK 01b (1) or 11b (3)."""
    return f"2f{bytchk << 1:02x}{lba:08x}00{blocks:04x}00"


def test_verify_compares_the_cdbs_blocks_not_the_data_sent(tgtd, work):
    """VERIFY with BYTCHK=01b compares VERIFICATION LENGTH blocks, whatever Data-Out
    length the initiator sent: too little data fails (PARAMETER LIST LENGTH ERROR) rather
    than passing blocks never compared; data beyond the range is not compared (no false
    MISCOMPARE, no LBA OUT OF RANGE at the end of the LUN) and shows as an underflow
    residual."""
    raw = make_raw(os.path.join(work, "img.raw"), 2 * MiB, seed=13)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    last = 2 * MiB // 512 - 1
    for lba in (0, last):
        assert iscsi_cmd(url, "write", lba, 1, 0x11)["status"] == "GOOD"
    # Blocks 1.. hold the image's random bytes.
    r = iscsi_cmd(url, "raw", verify10(0, 1), "@512:0x11")
    assert r["status"] == "GOOD", r
    r = iscsi_cmd(url, "raw", verify10(0, 1), "@1024:0x11")
    assert r["status"] == "GOOD", r
    assert (r["residual_status"], r["residual"]) == ("underflow", 512), r
    r = iscsi_cmd(url, "raw", verify10(last, 1), "@1024:0x11")
    assert r["status"] == "GOOD", r
    r = iscsi_cmd(url, "raw", verify10(0, 2), "@512:0x11")
    assert (r["status"], r["key"], r["asc"], r["ascq"]) == ("CHECK_CONDITION", 5, 0x1A, 0), r
    # The whole range is still compared when enough is sent: block 1 differs.
    r = iscsi_cmd(url, "raw", verify10(0, 2), "@1024:0x11")
    assert (r["status"], r["key"], r["asc"], r["info"]) == ("CHECK_CONDITION", 0x0E, 0x1D, 512)
    # BYTCHK=11b: one block against every block of the range.
    assert iscsi_cmd(url, "raw", verify10(last, 1, 3), "@512:0x11")["status"] == "GOOD"
    r = iscsi_cmd(url, "raw", verify10(last, 1, 3), "@256:0x11")
    assert (r["status"], r["key"], r["asc"]) == ("CHECK_CONDITION", 5, 0x1A), r


def test_write_same_without_its_data_block_writes_nothing(tgtd, work):
    """WRITE SAME without NDOB takes the block to write from the Data-Out; sent without
    one, it fails (PARAMETER LIST LENGTH ERROR) and the range keeps its data, rather than
    being filled with zeros and reported GOOD. With NDOB (WRITE SAME(16)) no block is
    sent and zeros are written."""
    raw = make_raw(os.path.join(work, "img.raw"), 2 * MiB, seed=14)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    image = hashlib.sha256(read_file(raw)[:4 * 512]).hexdigest()
    for cdb in ("41000000000000000400", "93000000000000000000000000040000"):
        r = iscsi_cmd(url, "raw", cdb, "none")
        assert (r["status"], r["key"], r["asc"]) == ("CHECK_CONDITION", 5, 0x1A), (cdb, r)
        assert iscsi_cmd(url, "read", 0, 4)["sha256"] == image, cdb
    r = iscsi_cmd(url, "raw", "93010000000000000000000000040000", "none")  # NDOB
    assert r["status"] == "GOOD", r
    assert iscsi_cmd(url, "read", 0, 4)["sha256"] == hashlib.sha256(bytes(4 * 512)).hexdigest()


def test_unmap_reads_zeros_and_is_deallocated(tgtd, work):
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=6)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    lba = MiB // 512
    assert iscsi_cmd(url, "lbastatus", lba)["descriptors"][0][2] == 0  # mapped
    qemu_io(url, f"discard {MiB} {MiB}")
    qemu_io(url, f"read -P 0 {MiB} {MiB}")
    d = iscsi_cmd(url, "lbastatus", lba)["descriptors"][0]
    assert d[0] == lba and d[1] == MiB // 512 and d[2] == 1  # deallocated, 1 MiB
    qemu_io(url, f"read -P 0 {MiB} {MiB}")
    # The rest is untouched.
    exp = read_file(raw)
    r = iscsi_cmd(url, "read", 0, 2048)
    assert r["sha256"] == hashlib.sha256(exp[:MiB]).hexdigest()


def test_lba_status_with_blocks_larger_than_a_grain(tgtd, work):
    """The disk tracks allocation in 4 KiB grains. With 8 KiB logical blocks, a block is
    deallocated only when both its grains are: a block with one deallocated grain and one
    holding data is mapped, whichever grain comes first (an initiator skips deallocated
    blocks as zeros: qemu-img convert would lose the data)."""
    raw = make_raw(os.path.join(work, "img.raw"), 2 * MiB, seed=12)
    disk = os.path.join(work, "disk")
    make_disk(raw, disk, os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, disk)
    # In 512-byte blocks: grain 2 (8 KiB block 1's first half), grain 5 (block 2's
    # second half), grains 8-11 (blocks 4 and 5 whole).
    for lba, n in ((16, 8), (40, 8), (64, 32)):
        r = iscsi_cmd(url, "unmap", lba, n)
        assert r["status"] == "GOOD", r
    assert iscsi_cmd(url, "lbastatus", 16)["descriptors"][0] == [16, 8, 1]
    tgtd.remove_targets()

    url = tgtd.add_lun(2, disk, blocksize=8192)
    blocks = 2 * MiB // 8192
    d = iscsi_cmd(url, "lbastatus", 0)["descriptors"]
    assert d == [[0, 4, 0], [4, 2, 1], [6, blocks - 6, 0]], d
    # Asked from inside the mixed blocks, the answer is the same.
    assert iscsi_cmd(url, "lbastatus", 1)["descriptors"][0] == [1, 3, 0]
    assert iscsi_cmd(url, "lbastatus", 2)["descriptors"][0] == [2, 2, 0]


def test_write_same_to_the_end_of_a_large_lun(tgtd, work):
    """WRITE SAME(16) with a count of 0 covers the LUN to its end. tgt keeps the byte
    count in 32 bits: on a LUN of 4 GiB + 4 MiB the whole-LUN count reads as 4 MiB, so
    the module must take it from the CDB, or the command returns GOOD and leaves the rest
    of the LUN as it was."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=8)
    size = 4096 * MiB + 4 * MiB
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all",
              size=size)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    last, far = size // 512 - 1, 4096 * MiB // 512 + 100
    zero = hashlib.sha256(bytes(512)).hexdigest()
    for lba in (last, far, 8):
        assert iscsi_cmd(url, "write", lba, 1, 0x5A)["status"] == "GOOD"
    # without UNMAP, the last 16 blocks: written
    assert iscsi_cmd(url, "writesame", last - 15, 0, 0x11)["status"] == "GOOD"
    for lba in (last - 15, last):
        r = iscsi_cmd(url, "read", lba, 1)
        assert r["sha256"] == hashlib.sha256(b"\x11" * 512).hexdigest(), (lba, r)
    # with UNMAP, the whole LUN: every block reads zeros afterwards
    assert iscsi_cmd(url, "writesame", 0, 0, 0, "unmap")["status"] == "GOOD"
    for lba in (last, far, 8):
        assert iscsi_cmd(url, "read", lba, 1)["sha256"] == zero, lba
    # GET LBA STATUS beyond the end (an LBA whose byte offset wraps to 0) is refused
    r = iscsi_cmd(url, "lbastatus", 1 << 63)
    assert (r["status"], r["key"], r["asc"]) == ("CHECK_CONDITION", 5, 0x21), r


def test_stalled_fetch_ends_within_deadline_and_other_luns_work(tgtd, work, servers):
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=8)
    deadline_ms = 1500
    make_disk(raw, os.path.join(work, "cold"), os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "stall.sock"), timeout_ms=deadline_ms)
    make_disk(raw, os.path.join(work, "warm"), os.path.join(work, "store2"), cache="all")
    fs = fetch_server(servers, work, raw, mode="stall", name="stall.sock")
    cold = tgtd.add_lun(1, os.path.join(work, "cold"))
    warm = tgtd.add_lun(2, os.path.join(work, "warm"))

    t0 = time.monotonic()
    p = subprocess.Popen([ISCSI_CMD, cold, "read", "0", "8"], stdout=subprocess.PIPE, text=True)
    try:
        # The cold READ has reached the fetch server, which never answers it: from here
        # on the cold LUN's worker is stalled.
        assert wait_until(lambda: fs.counts["FETCH"] >= 1 or p.poll() is not None, 30), \
            "the cold READ never asked for its chunk"
        assert p.poll() is None, "the cold READ ended before its fetch could stall it"
        # While the cold LUN's worker waits on the fetch, the warm LUN serves reads.
        r = iscsi_cmd(warm, "read", 0, 2048)
        assert r["status"] == "GOOD"
        assert r["sha256"] == hashlib.sha256(read_file(raw)[:MiB]).hexdigest()
        assert p.poll() is None  # ... and it did so while the stalled read was pending
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    elapsed = time.monotonic() - t0
    r = json.loads(out)
    assert r["status"] == "BUSY"  # initiators retry BUSY (QEMU does)
    assert r["ms"] >= deadline_ms * 0.9
    assert elapsed < deadline_ms / 1000 + 5


@pytest.mark.parametrize("op", ["writesame", "unmap"])
def test_multi_step_write_ends_within_one_deadline(tgtd, work, servers, op):
    """A command the worker runs in steps (WRITE SAME in 1 MiB pieces, UNMAP descriptor by
    descriptor) has one deadline, not one per step. Four uncached chunks each needed for a
    read-modify-write of an unaligned edge, each arriving 0.6 s after its FETCH: every
    step fits in the 1.5 s deadline, the command (2.4 s) does not, so it ends BUSY at its
    deadline. What was written before stays; the initiator's retry finds those chunks
    cached and completes."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=15)
    deadline_ms, delay = 1500, 0.6
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "f.sock"), timeout_ms=deadline_ms)
    fs = fetch_server(servers, work, raw, mode="slow", delay=delay)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    blk = MiB // 512
    if op == "writesame":
        # Pieces [512, 1M+512), [1M+512, 2M+512), [2M+512, 3M+512): their unaligned edges
        # lie in chunks 0 and 1, 2, 3.
        args = ("writesame", 1, 3 * blk, 0x33)
    else:
        # Eight blocks from 512 bytes into each of chunks 0 to 3: sub-grain, written as
        # zeros over the chunk's data.
        args = ("unmapraw", 8 + 4 * 16, unmap_list([(i * blk + 1, 8) for i in range(4)]))
    t0 = time.monotonic()
    r = iscsi_cmd(url, *args)
    elapsed = time.monotonic() - t0
    # One deadline per step would complete the command (GOOD) after 4 x 0.6 s = 2.4 s.
    assert r["status"] == "BUSY", r
    # It ends at its deadline: r["ms"] is the command alone as iscsi_cmd timed it (not
    # the process start and login, which a loaded machine slows), with 0.6 s of slack,
    # still below the 2.4 s of the per-step behaviour.
    assert r["ms"] < deadline_ms + 600, r
    assert elapsed < deadline_ms / 1000 + 10, elapsed  # the whole iscsi_cmd: no hang
    assert fs.counts["FETCH"] >= 3
    # The retry completes: the chunks fetched before the deadline are cached now.
    for _ in range(4):
        r = iscsi_cmd(url, *args)
        if r["status"] == "GOOD":
            break
    assert r["status"] == "GOOD", r
    data = read_file(raw)
    if op == "writesame":
        want = data[:512] + b"\x33" * (3 * MiB) + data[3 * MiB + 512:]
    else:
        want = bytearray(data)
        for i in range(4):
            want[i * MiB + 512:i * MiB + 512 + 4096] = bytes(4096)
    qemu_img("convert", "-f", "raw", "-O", "raw", url, os.path.join(work, "o.raw"))
    assert read_file(os.path.join(work, "o.raw")) == bytes(want)


def test_failed_fetch_is_medium_error_and_cached_ranges_work(tgtd, work, servers):
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=9)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="even",
              socket_path=os.path.join(work, "f.sock"), timeout_ms=5000)
    fetch_server(servers, work, raw, mode="fail")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    r = iscsi_cmd(url, "read", MiB // 512, 8)  # chunk 1: not cached
    assert (r["status"], r["key"], r["asc"], r["ascq"]) == ("CHECK_CONDITION", 3, 0x11, 0)
    r = iscsi_cmd(url, "read", 0, 2048)  # chunk 0: cached
    assert r["sha256"] == hashlib.sha256(read_file(raw)[:MiB]).hexdigest()


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.EINVAL, errno.EMFILE])
def test_daemon_side_errors_are_medium_errors_on_read(tgtd, work, servers, err):
    """A READ whose fetch failed inside rackdiskd with an errno that has a local meaning
    in the module (EROFS/EACCES: write protected, EINVAL: invalid field in CDB, EMFILE:
    target failure) is a chunk that could not be had: MEDIUM ERROR / UNRECOVERED READ
    ERROR, never DATA PROTECT or ILLEGAL REQUEST."""
    raw = make_raw(os.path.join(work, "img.raw"), 2 * MiB, seed=9)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "f.sock"), timeout_ms=5000)
    fetch_server(servers, work, raw, mode="fail", fail_errno=err)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    r = iscsi_cmd(url, "read", 0, 8)
    assert (r["status"], r["key"], r["asc"], r["ascq"]) == ("CHECK_CONDITION", 3, 0x11, 0), r


def test_prefetch_asks_for_missing_chunks_and_touch_reports_hits(tgtd, work, servers):
    raw = make_raw(os.path.join(work, "img.raw"), 6 * MiB, seed=10, zero_chunks={1})
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "f.sock"))
    fs = fetch_server(servers, work, raw)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    hashes = chunk_hashes(raw)
    r = iscsi_cmd(url, "prefetch", 0, 4 * MiB // 512)
    assert r["status"] == "GOOD"
    # Chunks 0, 2, 3 are missing and non-zero; chunk 1 is all zero: never fetched.
    assert sorted(fs.prefetched) == sorted([hashes[0], hashes[2], hashes[3]])
    # The fake server filled them: reading them needs no FETCH.
    qemu_img("convert", "-f", "raw", "-O", "raw", url, os.path.join(work, "o.raw"))
    assert fs.counts["FETCH"] == 2  # chunks 4 and 5 only
    tgtd.remove_targets()  # closing the LUN sends the last TOUCH batch
    assert {hashes[i] for i in (0, 2, 3, 4, 5)} <= fs.touched


def test_prefetch_with_zero_blocks_fetches_to_the_end(tgtd, work, servers):
    """PRE-FETCH's NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium" (SBC-3):
    every missing chunk from the LBA on is filled, none before it."""
    raw = make_raw(os.path.join(work, "img.raw"), 6 * MiB + 64 * 1024, seed=12,
                   zero_chunks={3})
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="none",
              socket_path=os.path.join(work, "f.sock"))
    fs = fetch_server(servers, work, raw)
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    hashes = chunk_hashes(raw)
    assert len(hashes) == 7
    r = iscsi_cmd(url, "prefetch", (MiB + 4096) // 512, 0)  # from inside chunk 1
    assert r["status"] == "GOOD"
    # Chunks 1, 2, 4, 5 and the short last one 6; chunk 3 is all zero, chunk 0 before.
    assert sorted(fs.prefetched) == sorted([hashes[i] for i in (1, 2, 4, 5, 6)])
    qemu_img("convert", "-f", "raw", "-O", "raw", url, os.path.join(work, "o.raw"))
    assert fs.counts["FETCH"] == 1  # chunk 0 only
    assert read_file(os.path.join(work, "o.raw")) == read_file(raw)


def unmap_list(descriptors, bdlen=None):
    """An UNMAP parameter list as hex: the 8-byte header (its BLOCK DESCRIPTOR DATA LENGTH
    bdlen, by default the descriptors' length) and 16-byte (lba, blocks) descriptors."""
    body = b"".join(lba.to_bytes(8, "big") + n.to_bytes(4, "big") + bytes(4)
                    for lba, n in descriptors)
    bdlen = len(body) if bdlen is None else bdlen
    return ((6 + bdlen).to_bytes(2, "big") + bdlen.to_bytes(2, "big") + bytes(4) + body).hex()


def test_unmap_is_good_without_sense_or_residual(tgtd, work, servers):
    """A successful UNMAP answers GOOD and nothing else: tgt's own UNMAP handler left
    ILLEGAL REQUEST sense and an underflow of the whole list on every success (libiscsi
    drops sense sent with GOOD, so the residual is what shows it)."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=13)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    r = iscsi_cmd(url, "unmap", MiB // 512, 2048)
    assert (r["status"], r["residual_status"], r["residual"], r["sense"]) == \
        ("GOOD", "none", 0, False)
    assert iscsi_cmd(url, "read", MiB // 512, 2048)["sha256"] == \
        hashlib.sha256(bytes(MiB)).hexdigest()
    assert iscsi_cmd(url, "read", 0, 2048)["sha256"] == \
        hashlib.sha256(read_file(raw)[:MiB]).hexdigest()


def test_unmap_range_checks_and_parameter_list(tgtd, work, servers):
    """UNMAP's parameter list per SBC-3: a descriptor past the end is LBA OUT OF RANGE
    (and nothing is released); a list of 1 to 7 bytes is PARAMETER LIST LENGTH ERROR; no
    list, or no descriptor, is GOOD; the header's BLOCK DESCRIPTOR DATA LENGTH says how
    many descriptors count (bytes beyond it, and an incomplete last one, are ignored)."""
    raw = make_raw(os.path.join(work, "img.raw"), 4 * MiB, seed=14)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(1, os.path.join(work, "disk"))
    blocks = 4 * MiB // 512
    zeros = hashlib.sha256(bytes(4096)).hexdigest()

    r = iscsi_cmd(url, "unmap", blocks - 8, 16)
    assert (r["status"], r["key"], r["asc"], r["ascq"]) == ("CHECK_CONDITION", 5, 0x21, 0)
    # Two descriptors, the second past the end: the first is not released either.
    r = iscsi_cmd(url, "unmapraw", 40, unmap_list([(0, 8), (blocks, 1)]))
    assert (r["status"], r["key"], r["asc"]) == ("CHECK_CONDITION", 5, 0x21)
    assert iscsi_cmd(url, "read", 0, 8)["sha256"] != zeros

    r = iscsi_cmd(url, "unmapraw", 4, "00060000")
    assert (r["status"], r["key"], r["asc"], r["ascq"]) == ("CHECK_CONDITION", 5, 0x1a, 0)
    for plen, hexlist in ((0, ""), (8, unmap_list([]))):
        r = iscsi_cmd(url, "unmapraw", plen, hexlist)
        assert (r["status"], r["residual_status"], r["sense"]) == ("GOOD", "none", False)

    # Only the first descriptor is within the descriptor data length (16 of 32 bytes).
    r = iscsi_cmd(url, "unmapraw", 40, unmap_list([(0, 8), (blocks, 1)], bdlen=16))
    assert (r["status"], r["sense"]) == ("GOOD", False)
    assert iscsi_cmd(url, "read", 0, 8)["sha256"] == zeros
    # 24 bytes of descriptors: the incomplete second one is ignored.
    r = iscsi_cmd(url, "unmapraw", 40, unmap_list([(8, 8), (blocks, 1)], bdlen=24))
    assert (r["status"], r["sense"]) == ("GOOD", False)
    assert iscsi_cmd(url, "read", 8, 8)["sha256"] == zeros
    # The CDB's PARAMETER LIST LENGTH bounds the list: a descriptor beyond it is not read.
    r = iscsi_cmd(url, "unmapraw", 24, unmap_list([(16, 8), (blocks, 1)]))
    assert (r["status"], r["sense"]) == ("GOOD", False)
    assert iscsi_cmd(url, "read", 16, 8)["sha256"] == zeros
    assert iscsi_cmd(url, "read", 24, 8)["sha256"] != zeros


def test_bad_lun_json_refuses_the_lun(tgtd, work):
    d = os.path.join(work, "bad")
    os.makedirs(d)
    with open(os.path.join(d, "lun.json"), "w") as f:
        f.write('{"format": 1, "name": "../x"}')
    assert tgtd.add_lun(1, d, check=False) is None
    # tgtd is still fine: another LUN works.
    raw = make_raw(os.path.join(work, "img.raw"), MiB, seed=11)
    make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
    url = tgtd.add_lun(2, os.path.join(work, "disk"))
    qemu_io(url, "read 0 4096")
