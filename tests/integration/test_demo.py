"""`make demo` end to end: scripts/demo.sh with DEMO_EXIT=1 publishes the sample images,
starts nginx, redis-server and appliance A (rackdiskd with its tgtd), reads and writes a
disk through QEMU's iSCSI driver, prints the URL, counters and a QEMU command line; then
appliance B reads a disk of the same image, whose chunks all come from A (peer bytes > 0,
seed bytes 0 in the demo's bytes-by-source table); then it exits and leaves no server
behind. Also: SIGINT while it waits is a clean exit that stops everything."""
import os
import re
import signal
import subprocess
import time

from appliance_helpers import pid_alive, wait_until
from servers import BUILD

DEMO = os.path.join(os.path.dirname(BUILD), "scripts", "demo.sh")
URL_RE = re.compile(r"^\s*iSCSI URL: (iscsi://127\.0\.0\.1:\d+/\S+:demo1/1)$", re.M)
PROCS_RE = re.compile(r"processes: nginx (\d+), redis-server (\d+), rackdiskd (\d+),"
                      r" tgtd (\d+)")
PROCS_B_RE = re.compile(r"processes: rackdiskd (\d+), tgtd (\d+) \(appliance B\)")
SOURCES_RE = re.compile(r"^\s*bytes from:\s+local\s+peer\s+seed\n"
                        r"\s*demo-a\s+(\d+)\s+(\d+)\s+(\d+)\n"
                        r"\s*demo-b\s+(\d+)\s+(\d+)\s+(\d+)$", re.M)
WORK_RE = re.compile(r"(/tmp/rackdisk-demo\.\w+)")


def processes_under(workdir):
    """pids whose command line names the demo's work dir (nginx -p, rackdiskd --config),
    whose environment does (tgtd's TGT_IPC_SOCKET) or whose working directory is in it
    (redis-server --dir, which rewrites its command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        inside = workdir.encode() in cmd or workdir.encode() in env or \
            cwd == workdir or cwd.startswith(workdir + "/")
        if int(pid) != os.getpid() and inside and pid_alive(int(pid)):
            found.append((int(pid), cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def check_output(out):
    m = URL_RE.search(out)
    assert m, out[-3000:]
    url = m.group(1)
    assert "QEMU:      qemu-system-x86_64" in out and f"file={url},format=raw" in out
    assert "rackdisk_chunk_fetch_bytes_total{source=\"seed\"}" in out
    # The whole image came from the seed once: the seed's byte counter is not zero.
    seed_bytes = re.search(r'rackdisk_chunk_fetch_bytes_total\{source="seed"\} (\d+)', out)
    assert seed_bytes and int(seed_bytes.group(1)) > 0, out[-3000:]
    assert "wrote 1048576/1048576 bytes at offset 0" in out
    assert "Pattern verification failed" not in out
    # B read a disk of the same image: every chunk it needed came from A's peer server,
    # none from the seed; A got exactly those bytes from the seed (it read only that
    # image), so B took each of A's chunks once.
    src = SOURCES_RE.search(out)
    assert src, out[-3000:]
    a_local, a_peer, a_seed, b_local, b_peer, b_seed = map(int, src.groups())
    assert b_peer > 0 and b_seed == 0, src.group(0)
    assert a_seed > 0 and a_peer == 0 and b_peer == a_seed, src.group(0)
    assert "B's read equals the source image byte for byte" in out
    procs = PROCS_RE.search(out)
    procs_b = PROCS_B_RE.search(out)
    assert procs and procs_b, out[-3000:]
    pids = [int(p) for p in procs.groups() + procs_b.groups()]
    return pids, WORK_RE.search(out).group(1)


def test_demo_runs_and_leaves_nothing_behind():
    p = subprocess.run(["bash", DEMO], env=dict(os.environ, DEMO_EXIT="1"),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    pids, work = check_output(p.stdout)
    assert p.stdout.rstrip().endswith("demo: stopped, cleaned up")
    # nginx, redis-server, both rackdiskds and the tgtds they spawned are gone (a zombie reaped later is gone too).
    assert wait_until(lambda: not any(pid_alive(x) for x in pids), 10), pids
    assert not processes_under(work)
    assert not os.path.exists(work)


def test_demo_waits_then_ctrl_c_cleans_up():
    # DEMO_EXIT=0 and a stdin that is a terminal: it waits; SIGINT (Ctrl-C) to the script
    # then ends it with status 0 and everything stopped.
    master, slave = os.openpty()
    proc = subprocess.Popen(["bash", DEMO], env=dict(os.environ, DEMO_EXIT="0"),
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    os.close(slave)
    out = []
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            out.append(line)
            if "press Ctrl-C" in line or time.monotonic() > deadline:
                break
        text = "".join(out)
        if "press Ctrl-C" not in text and proc.poll() is not None:
            text += proc.stderr.read()  # it ended early: say why
        assert "press Ctrl-C" in text, text[-3000:]
        pids, work = check_output(text)
        time.sleep(0.5)
        assert proc.poll() is None, "the demo did not wait for Ctrl-C"
        assert all(pid_alive(x) for x in pids)
        # The scan used below after exit sees the running servers, tgtd included.
        assert set(pids) <= {pid for pid, _ in processes_under(work)}, processes_under(work)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    assert proc.returncode == 0, rest + err
    assert "demo: stopped, cleaned up" in rest
    assert wait_until(lambda: not any(pid_alive(x) for x in pids), 10), pids
    assert not processes_under(work)
    assert not os.path.exists(work)
