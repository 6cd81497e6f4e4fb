"""`make demo` end to end: scripts/demo.sh with DEMO_EXIT=1 publishes the sample images,
starts nginx, redis-server and appliance A (rackdiskd with its tgtd), reads and writes a
disk through QEMU's iSCSI driver, prints the URL, counters and a QEMU command line; then
appliance B reads a disk of the same image, whose chunks all come from A (peer bytes > 0,
seed bytes 0 in the demo's bytes-by-source table); then it exits and leaves no server
behind. Also: SIGINT while it waits is a clean exit that stops everything."""
import os
import re
import select
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


class Demo:
    """scripts/demo.sh in its own process group. Its stdout is read without blocking, every
    read bounded by a deadline (a demo that stops printing cannot hang the test); its
    stderr goes to a file, so it can never fill a pipe nobody reads. kill() ends the
    process group and every process still running in the demo's work dir."""

    def __init__(self, tmp_path, demo_exit, stdin):
        self.err_path = tmp_path / "demo.stderr"
        with open(self.err_path, "wb") as errf:
            self.proc = subprocess.Popen(["bash", DEMO],
                                         env=dict(os.environ, DEMO_EXIT=demo_exit),
                                         stdin=stdin, stdout=subprocess.PIPE, stderr=errf,
                                         start_new_session=True)
        self.buf = b""
        self.eof = False

    @property
    def text(self):
        return self.buf.decode(errors="replace")

    def stderr(self):
        try:
            return self.err_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def read_until(self, done, timeout):
        """Reads stdout until done(text) holds, EOF or timeout seconds; returns the text."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not self.eof and not done(self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                b = os.read(fd, 65536)
                if b:
                    self.buf += b
                else:
                    self.eof = True
        return self.text

    def finish(self, timeout):
        """Reads to EOF and waits for the exit, both within timeout seconds; returns the
        exit status, or None if the demo is still running then."""
        deadline = time.monotonic() + timeout
        self.read_until(lambda _: False, timeout)
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL to the demo's process group and to anything left in its work dir."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        m = WORK_RE.search(self.text)
        if m:
            for pid, _ in processes_under(m.group(1)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)
        self.proc.stdout.close()


def test_demo_runs_and_leaves_nothing_behind(tmp_path):
    demo = Demo(tmp_path, "1", subprocess.DEVNULL)
    try:
        rc = demo.finish(300)
        out = demo.text
        assert rc == 0, f"exit {rc}\n{out[-3000:]}\n{demo.stderr()}"
        pids, work = check_output(out)
        assert out.rstrip().endswith("demo: stopped, cleaned up")
        # nginx, redis-server, both rackdiskds and the tgtds they spawned are gone (a zombie
        # reaped later is gone too).
        assert wait_until(lambda: not any(pid_alive(x) for x in pids), 10), pids
        assert not processes_under(work)
        assert not os.path.exists(work)
    finally:
        demo.kill()


def test_demo_waits_then_ctrl_c_cleans_up(tmp_path):
    # DEMO_EXIT=0 and a stdin that is a terminal: it waits; SIGINT (Ctrl-C) to the script
    # then ends it with status 0 and everything stopped.
    master, slave = os.openpty()
    demo = Demo(tmp_path, "0", slave)
    os.close(slave)
    proc = demo.proc
    try:
        text = demo.read_until(lambda t: "press Ctrl-C" in t, 240)
        assert "press Ctrl-C" in text, \
            f"exit {proc.poll()}\n{text[-3000:]}\n{demo.stderr()}"
        pids, work = check_output(text)
        time.sleep(0.5)
        assert proc.poll() is None, "the demo did not wait for Ctrl-C"
        assert all(pid_alive(x) for x in pids)
        # The scan used below after exit sees the running servers, tgtd included.
        assert set(pids) <= {pid for pid, _ in processes_under(work)}, processes_under(work)
        proc.send_signal(signal.SIGINT)
        rc = demo.finish(60)
        rest = demo.text[len(text):]
        assert rc == 0, f"exit {rc}\n{rest}\n{demo.stderr()}"
        assert "demo: stopped, cleaned up" in rest
        assert wait_until(lambda: not any(pid_alive(x) for x in pids), 10), pids
        assert not processes_under(work)
        assert not os.path.exists(work)
    finally:
        demo.kill()
        os.close(master)


def demo_functions(*names):
    """The text of demo.sh's functions of these names (each from `name() {` to the `}` that
    closes it at the start of a line)."""
    with open(DEMO) as f:
        src = f.read()
    parts = []
    for name in names:
        m = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", src, re.M | re.S)
        assert m, f"demo.sh has no function {name}"
        parts.append(m.group(0))
    return "".join(parts)


# demo.sh's own cleanup, signal handler and wait loop around one server that takes 3 s to
# stop (it ignores SIGINT and SIGTERM, as a server busy stopping its own children would),
# and a module "installed" over a previous one.
CLEANUP_HARNESS = """set -euo pipefail
WORK=$1
MODULE_DST=$2
PIDS=()
{functions}
trap cleanup EXIT
trap on_signal INT TERM
echo previous > "$WORK/previous-module.so"
echo demo > "$MODULE_DST"
(trap '' INT TERM; : > "$WORK/server-up"; exec sleep 3) &
PIDS+=($!)
for _ in $(seq 3000); do
	[ -e "$WORK/server-up" ] && break
	sleep 0.01
done
[ -e "$WORK/server-up" ] || {{ echo "the server did not start in 30 s" >&2; exit 1; }}
WAITING=1
echo ready
while :; do
	sleep 3600 &
	SLEEP_PID=$!
	wait "$SLEEP_PID" || true
done
"""


def read_line(pipe, timeout):
    """One line from pipe (a Popen's text stdout, not read from before), or what came of
    it within timeout seconds, or at EOF."""
    deadline = time.monotonic() + timeout
    fd, got = pipe.fileno(), b""
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        b = os.read(fd, 1)
        if not b:
            break
        got += b
    return got.decode(errors="replace")


def test_second_ctrl_c_during_cleanup_does_not_stop_it(tmp_path):
    """Ctrl-C while the demo waits starts cleanup, which stops the servers one by one
    (each bounded); a second Ctrl-C meanwhile must not end the script before it puts the
    operator's module back and removes the work dir. Runs demo.sh's cleanup, on_signal,
    stop_pid and restore_module, as written there, in a harness."""
    work = tmp_path / "work"
    work.mkdir()
    module = tmp_path / "bs_rackdisk.so"
    script = CLEANUP_HARNESS.format(functions=demo_functions(
        "stop_pid", "cleanup", "on_signal", "restore_module"))
    proc = subprocess.Popen(["bash", "-c", script, "harness", str(work), str(module)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = read_line(proc.stdout, 30)
        if line != "ready\n":
            os.killpg(proc.pid, signal.SIGKILL)  # its stderr ends only with it
            raise AssertionError(f"harness not ready in 30 s: {line!r} "
                                 f"{proc.communicate(timeout=10)[1]}")
        # Ctrl-C on a terminal signals the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1)
        assert proc.poll() is None, "cleanup did not wait for the slow server"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"exit {proc.returncode}: {out}{err}"
        assert "demo: stopped, cleaned up" in out
        assert module.read_text() == "previous\n", "the previous module was not restored"
        assert not work.exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
