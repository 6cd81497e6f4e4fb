"""The tgtd that rackdiskd spawns keeps its command data buffers mapped (target/tgtmgr.c,
TGTD_MALLOC_TUNABLES): once warm, a whole-disk read through iSCSI costs tgtd no page faults
per command, which on loopback was what held every backing store to ~300 MiB/s. An
operator's own GLIBC_TUNABLES reach tgtd after ours, so they win.

Real nginx (seed), rackdiskd with its own tgtd and bs_rackdisk.so, qemu-img bench."""
import os
import subprocess

import pytest

from appliance_helpers import Appliance, install_module, make_seed
from tgt_helpers import TARGET_PARAMS

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def seed(tmp_path):
    nginx, raws = make_seed(tmp_path / "seed", tags=(("big", 16, 3),), chunk_size="1M")
    yield nginx, raws
    nginx.stop()


@pytest.fixture
def appliance(seed):
    install_module()
    apps = []

    def make(**kw):
        a = Appliance(seed[0].url, **kw)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.cleanup()


def tgtd_tunables(pid):
    """tgtd's GLIBC_TUNABLES as it was passed. glibc turns the ':' separators into NULs in
    place while parsing, so the entries after the first follow as separate strings."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = f.read().decode(errors="replace").split("\0")
    out = []
    for e in env:
        if e.startswith("GLIBC_TUNABLES="):
            out.append(e[len("GLIBC_TUNABLES="):])
        elif out and e.startswith("glibc."):
            out.append(e)
        elif out:
            break
    return [t for v in out for t in v.split(":")]


def minor_faults(pid):
    """minflt of every thread of pid (the process's stat counts exited threads too)."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name (which may hold spaces) start at "state".
        return int(f.read().rsplit(")", 1)[1].split()[7])


def read_whole(url, size):
    r = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(size // MiB),
                        "-d", "8", "-s", "1M", "-S", "1M", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def appliance_with_disk(appliance, seed):
    """A started appliance exporting disk d1 of image "big": (appliance, URL, image size)."""
    a = appliance().start()
    p = a.cli("disk", "create", "d1", "--image", "big")
    assert p.returncode == 0, p.stderr
    return a, p.stdout.strip().split("\n")[-1], os.path.getsize(seed[1]["big"])


def test_spawned_tgtd_reads_without_page_faults_per_command(appliance, seed):
    a, url, size = appliance_with_disk(appliance, seed)
    pid = a.tgtd_pid()
    assert any(t.startswith("glibc.malloc.mmap_threshold=") for t in tgtd_tunables(pid))
    # The first read fills the cache; the next ones warm tgtd's buffers.
    for _ in range(8):
        read_whole(url, size)
    before = minor_faults(pid)
    for _ in range(3):
        read_whole(url, size)
    faults = minor_faults(pid) - before
    pages = 3 * size // PAGE
    # Untuned, every 1 MiB buffer is faulted in afresh: about one fault per page read.
    assert faults < pages // 4, f"{faults} page faults in tgtd reading {pages} pages"


def test_operator_tunables_follow_ours(appliance, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    a = appliance().start()
    env = tgtd_tunables(a.tgtd_pid())
    assert env[-1] == "glibc.malloc.trim_threshold=1048576"
    assert any(e.startswith("glibc.malloc.mmap_threshold=") for e in env[:-1])


def test_targets_offer_large_pdus_and_bursts(appliance):
    """rackdiskd's targets offer 256 KiB PDUs and 1 MiB bursts (tgt: 8 KiB and 256 KiB),
    so a 1 MiB write is a few Data-Out PDUs and one R2T, not 128 PDUs and four R2Ts."""
    a = appliance().start()
    p = a.cli("disk", "create", "d1", "--image", "big")
    assert p.returncode == 0, p.stderr
    tid = next(iter(a.targets()))
    r = a.tgtadm("--op", "show", "--mode", "target", "--tid", str(tid))
    assert r.returncode == 0, r.stderr
    params = dict(line.strip().split("=", 1) for line in r.stdout.splitlines()
                  if "=" in line)
    for name, value in TARGET_PARAMS:
        assert params.get(name) == value, f"{name}: {params.get(name)}"


def heap_resident(pid):
    """Resident bytes of pid's [heap] mapping (0 when it has none)."""
    rss, in_heap = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                in_heap = fields[-1] == "[heap]"
            elif in_heap and fields[0] == "Rss:":
                rss += int(fields[1]) * 1024
    return rss


def test_first_lu_faults_in_tgtds_heap(appliance):
    """The first rackdisk LU a tgtd opens faults 16 MiB of its heap in and frees it to the
    heap's top (bs_rackdisk.c, rd_warm_heap): a VM's first reads then find their data
    buffers mapped instead of waiting, a pair of 1 MiB buffers at a time, while tgtd's
    event loop faults in a new 2 MiB page. Before any read, the heap is already resident."""
    a = appliance().start()
    pid = a.tgtd_pid()
    before = heap_resident(pid)
    assert before < 8 * MiB, f"a tgtd with no LU already has {before} heap bytes resident"
    p = a.cli("disk", "create", "d1", "--image", "big")
    assert p.returncode == 0, p.stderr
    after = heap_resident(pid)
    assert after >= 16 * MiB, f"tgtd's heap: {after} bytes resident after the first LU"


def test_heap_stays_near_the_buffers_in_flight(appliance, seed):
    """tgt's data buffers are page-aligned 1 MiB requests (posix_memalign). With glibc's
    tcache on, the small alignment slack cut off each buffer goes to the tcache, which
    keeps it marked in use, so freed 1 MiB chunks never coalesce and a request does not
    fit them: the heap grew to 50-130 MiB for 8 reads in flight, each new MiB faulted in
    and zeroed on tgtd's event loop during the VM's first reads. With tcache_count=0
    (TGTD_MALLOC_TUNABLES) the heap stays at the warm-up plus the buffers in flight."""
    a, url, size = appliance_with_disk(appliance, seed)
    pid = a.tgtd_pid()
    for _ in range(12):
        read_whole(url, size)
    heap = heap_resident(pid)
    # 16 MiB of warm-up (rd_warm_heap) + 8 MiB in flight + tgt's own, with room to spare.
    assert heap < 36 * MiB, (f"tgtd's heap: {heap // MiB} MiB resident after 1 MiB reads, "
                             "8 in flight")
