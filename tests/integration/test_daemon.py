"""rackdiskd end to end: config errors, start/stop with its own tgtd, disks through the
CLI, reads through QEMU's iSCSI driver, reconcile after restarts, tgtd supervision,
metrics. Real nginx (seed), rackdiskd, tgtd with bs_rackdisk.so, qemu-img."""
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from appliance_helpers import (RACKDISKD, Appliance, QemuIo, install_module, make_seed,
                               pid_alive, wait_until)
from seedfault_helpers import StalledSeed

ISCSI_CMD = os.path.join(os.path.dirname(RACKDISKD), "tests", "iscsi_cmd")


@pytest.fixture
def seed(tmp_path):
    nginx, raws = make_seed(tmp_path / "seed")
    yield nginx, raws
    nginx.stop()


@pytest.fixture
def appliance(seed):
    install_module()
    nginx, _ = seed
    apps = []

    def make(**kw):
        a = Appliance(nginx.url, **kw)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.cleanup()


def run_daemon(conf_text, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(conf_text)
    return subprocess.run([RACKDISKD, "--config", str(conf)], capture_output=True, text=True,
                          timeout=30), str(conf)


GOOD = "[node]\nname = a1\nstate_dir = /tmp/x\n[seed]\nurl = http://127.0.0.1:1/\n"


@pytest.mark.parametrize("text,line,needle", [
    (GOOD + "[cache]\nsize = huge\n", 7, "[cache] size = 'huge' is not a size"),
    (GOOD + "[cache]\ncolour = red\n", 7, "unknown key 'colour' in [cache]"),
    (GOOD + "[nfs]\nx = 1\n", 6, "unknown section [nfs]"),
    (GOOD + "[nfs]\n", 6, "unknown section [nfs]"),
    (GOOD + "[iscsi]\nportal = 0.0.0.0\n", 7, "[iscsi] portal"),
    (GOOD + "[iscsi]\ntgtd = sometimes\n", 7, "spawn or external"),
    ("[node]\nname = ../a1\n", 2, "[node] name"),
    ("[seed]\nurl = http://x/\n", None, "[node] name is required"),
    (GOOD + "[api\n", 6, "syntax error"),
    (GOOD + "[iscsi]\ntgtd_path = /usr/sbin/nonexistent\n", None,
     "[iscsi] tgtd_path '/usr/sbin/nonexistent' cannot be executed: No such file or directory"),
    (GOOD + "[iscsi]\ntgtadm_path = /usr/sbin\n", None,
     "[iscsi] tgtadm_path '/usr/sbin' cannot be executed: Is a directory"),
    # the unit forgotten: no chunk could be stored, every uncached read failed
    (GOOD + "[cache]\nsize = 64\n", 7, "smaller than the largest chunk (16M)"),
    ("[node]\nname = a1\n[seed]\nurl = http://\n", 4, "[seed] url = 'http://' names no host"),
    ("[node]\nname = a1\nstate_dir = /" + "d" * 100 + "\n[seed]\nurl = http://s/\n", None,
     "[node] state_dir '/ddd"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, text, line, needle):
    p, conf = run_daemon(text, tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().split("\n")
    assert len(lines) == 1, p.stderr
    where = f"{conf}:{line}: " if line else f"{conf}: "
    assert lines[0].startswith("rackdiskd: " + where), lines[0]
    assert needle in lines[0], lines[0]


def test_missing_config_file_and_usage(tmp_path):
    p = subprocess.run([RACKDISKD, "--config", str(tmp_path / "none.conf")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "cannot open" in p.stderr
    p = subprocess.run([RACKDISKD], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--config FILE is required" in p.stderr
    p = subprocess.run([RACKDISKD, "--check-config", "--config", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    # --config with nothing after it was "unknown argument '--config'"
    for args in (["--config"], ["--check-config", "--config"], ["--config="]):
        p = subprocess.run([RACKDISKD, *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("rackdiskd: --config needs a value"), (args, p.stderr)
        assert "unknown" not in p.stderr


def test_programs_that_cannot_run_are_config_errors(tmp_path):
    """A tgtd_path or tgtadm_path that cannot be executed is a config error (exit 2, also
    for --check-config) rather than a start that fails later; an external tgtd's path is
    not checked (rackdiskd does not run it)."""
    conf = tmp_path / "rd.conf"
    conf.write_text(GOOD + "[iscsi]\ntgtadm_path = /usr/sbin/nonexistent\n")
    p = subprocess.run([RACKDISKD, "--check-config", "--config", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.strip() == (
        f"rackdiskd: {conf}: [iscsi] tgtadm_path '/usr/sbin/nonexistent' cannot be "
        "executed: No such file or directory"), p.stderr
    conf.write_text(GOOD + "[iscsi]\ntgtd = external\ntgtd_path = /usr/sbin/nonexistent\n")
    p = subprocess.run([RACKDISKD, "--check-config", "--config", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("key", ["tgtd_path", "tgtadm_path"])
def test_program_that_cannot_execute_fails_the_start_at_once(appliance, tmp_path, key):
    """A program that passes the config check but that execve refuses: the log said "tgtd
    started", then "exited at start with status 127 (another tgtd on control port ...?)"
    (tgtd), or waited 10 s for "did not become ready" (tgtadm). Now the child reports
    execve's errno and the start fails at once, naming the program."""
    bad = tmp_path / "not-a-program"
    bad.write_bytes(b"\x00garbage\n")
    bad.chmod(0o755)
    a = appliance(extra={"iscsi": [f"{key} = {bad}"]})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        a.start()
    assert a.proc.returncode == 1
    assert time.monotonic() - t0 < 5
    log = a.log_text()
    assert f"cannot execute {bad}: Exec format error" in log, log
    assert "exited at start" not in log and "did not become ready" not in log, log
    if key == "tgtd_path":
        assert "tgtd started" not in log, log


def test_start_and_clean_stop_on_sigterm(appliance):
    a = appliance().start()
    h = a.health()
    assert h["status"] == "ok" and h["node"] == "a1" and h["tgtd_spawned"]
    tgtd = h["tgtd_pid"]
    assert tgtd > 0 and pid_alive(tgtd)
    sock = os.path.join(a.state, "rackdiskd.sock")
    assert os.path.exists(sock)
    assert a.stop() == 0
    # The spawned tgtd is gone and the fetch socket removed.
    assert wait_until(lambda: not pid_alive(tgtd), 5), "spawned tgtd survived SIGTERM"
    assert not os.path.exists(sock)
    assert "stopped" in a.log_text()


def test_second_daemon_on_same_ports_fails_cleanly(appliance):
    a = appliance().start()
    # Same portal: its tgtd cannot listen there; start fails with a clear log, exit 1.
    b = appliance()
    b.portal_port = a.portal_port
    b.write_conf()
    with pytest.raises(RuntimeError):
        b.start()
    assert b.proc.returncode == 1
    assert f"could not listen on the portal 127.0.0.1:{a.portal_port}" in b.log_text()
    # Same API port.
    c = appliance()
    c.api_port = a.api_port
    c.write_conf()
    p = subprocess.run([RACKDISKD, "--config", c.conf], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert f"cannot listen on 127.0.0.1:{a.api_port} for the API" in p.stderr
    # Neither left a tgtd behind, and the first appliance is unharmed.
    assert "tgtd stopped" in p.stderr
    assert a.health()["status"] == "ok"


def test_disk_lifecycle_through_cli(appliance, seed, tmp_path):
    _, raws = seed
    a = appliance().start()
    p = a.cli("image", "pull", "deb")
    assert p.returncode == 0, p.stderr
    p = a.cli("--json", "image", "ls")
    assert [i["tag"] for i in json.loads(p.stdout)] == ["deb"]

    p = a.cli("disk", "create", "vm1", "--image", "deb", "--size", "16M")
    assert p.returncode == 0, p.stderr
    url = p.stdout.strip().split("\n")[-1]
    assert url == a.url("vm1")

    p = a.cli("disk", "ls", "--json")
    disks = json.loads(p.stdout)
    assert [(d["name"], d["image"], d["size"], d["url"]) for d in disks] == \
        [("vm1", "deb", 16 << 20, url)]
    p = a.cli("disk", "show", "vm1", "--json")
    d = json.loads(p.stdout)
    assert d["name"] == "vm1" and d["iqn"].endswith(":vm1") and d["lun"] == 1
    assert a.targets() == {d["tid"]: d["iqn"]}

    # Read the whole disk through QEMU's iSCSI driver: cold, then warm.
    for run in ("cold", "warm"):
        out = tmp_path / f"{run}.raw"
        r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr + a.log_text()
        img = open(raws["deb"], "rb").read()
        got = open(out, "rb").read()
        assert len(got) == 16 << 20
        assert got[:len(img)] == img, f"{run} read differs from the image"
        assert got[len(img):] == bytes(len(got) - len(img))

    # Duplicate and bad names: one clear line, non-zero exit.
    p = a.cli("disk", "create", "vm1", "--image", "deb")
    assert p.returncode == 1 and p.stderr.strip() == "rackdisk: disk 'vm1' already exists"
    p = a.cli("disk", "create", "../vm2", "--image", "deb")
    assert p.returncode == 2 and "invalid disk name" in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1
    p = a.cli("disk", "create", "vm3", "--image", "nosuch")
    assert p.returncode == 1 and "image 'nosuch' not found on the seed" in p.stderr

    p = a.cli("disk", "rm", "vm1")
    assert p.returncode == 0, p.stderr
    assert a.targets() == {}
    assert json.loads(a.cli("disk", "ls", "--json").stdout) == []
    assert not os.path.exists(os.path.join(a.state, "disks", "vm1"))
    p = a.cli("disk", "show", "vm1")
    assert p.returncode == 1 and "no disk named 'vm1'" in p.stderr


def test_restart_reconciles_targets(appliance):
    a = appliance().start()
    for n in ("r1", "r2", "r3"):
        assert a.cli("disk", "create", n, "--image", "deb").returncode == 0
    before = a.targets()
    assert sorted(before.values()) == sorted(a.url(n).split("/")[3] for n in ("r1", "r2", "r3"))
    assert a.stop() == 0

    # While it is down, a disk disappears (its directory removed by hand).
    import shutil
    shutil.rmtree(os.path.join(a.state, "disks", "r2"))
    a.start()
    after = a.targets()
    assert sorted(after.values()) == sorted(v for v in before.values() if not v.endswith(":r2"))
    # The re-exported disks serve I/O.
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 64k", a.url("r3")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "read 65536/65536" in r.stdout, r.stdout + r.stderr


def test_tgtd_restarted_and_reexported_after_crash(appliance):
    a = appliance().start()
    assert a.cli("disk", "create", "c1", "--image", "deb").returncode == 0
    old = a.tgtd_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: a.tgtd_pid() not in (0, old), 15), a.log_text()
    want = [a.url("c1").split("/")[3]]

    def reexported():
        # tgtadm fails while the new tgtd is still starting: that is "not yet", not a failure.
        r = a.tgtadm("--op", "show", "--mode", "target")
        return r.returncode == 0 and [l.split(": ", 1)[1] for l in r.stdout.splitlines()
                                      if l.startswith("Target ")] == want

    assert wait_until(reexported, 10), a.log_text()
    st, text = a.request("GET", "/metrics")
    assert "rackdisk_tgtd_restarts_total 1" in text
    assert a.stop() == 0


def test_terminal_signals_to_the_process_group_reach_rackdiskd_alone(appliance):
    """Ctrl-C and a terminal hangup signal the whole foreground process group. The spawned
    tgtd was in rackdiskd's and died of them at once (SIGHUP: restarted, its sessions
    dropped; SIGINT: killed before rackdiskd closed any LUN). Now rackdiskd alone gets
    them: SIGHUP reconciles, SIGINT stops after deleting every target (closing its LUN)."""
    a = appliance().start()
    for n in ("g1", "g2"):
        assert a.cli("disk", "create", n, "--image", "deb").returncode == 0
    tgtd = a.tgtd_pid()
    n = a.health()["reconciles"]
    os.killpg(a.proc.pid, signal.SIGHUP)
    assert reconciled(a, n), a.log_text()
    time.sleep(0.3)
    assert pid_alive(tgtd) and a.tgtd_pid() == tgtd, a.log_text()
    os.killpg(a.proc.pid, signal.SIGINT)
    assert a.proc.wait(30) == 0
    a.proc = None
    with open(a.log, errors="replace") as f:
        log = f.read()
    assert "SIGINT: stopping" in log and "tgtd stopped" in log, log
    assert "stopping tgtd: 2 of 2 targets deleted (their LUNs closed)" in log, log
    assert "exited with status" not in log and "did not exit" not in log, log
    assert "listing tgtd's targets" not in log, log
    assert wait_until(lambda: not pid_alive(tgtd), 5)


def full_log(a):
    with open(a.log, errors="replace") as f:
        return f.read()


def slow_when(marker, path, program, delay):
    """Writes an executable at path that runs program, after delay seconds while marker
    exists (one process: a killed wrapper leaves nothing behind)."""
    path.write_text("#!/usr/bin/python3\nimport os, sys, time\n"
                    f"if os.path.exists({str(marker)!r}):\n    time.sleep({delay})\n"
                    f"os.execv({program!r}, [{program!r}] + sys.argv[1:])\n")
    path.chmod(0o755)
    return str(path)


def stop_timed(a):
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    rc = a.proc.wait(60)
    a.proc = None
    return rc, time.monotonic() - t0


def test_sigterm_during_reexport_after_tgtd_restart(appliance, tmp_path):
    """SIGTERM while the supervisor re-exported the disks after a tgtd restart: stop
    deleted the targets while reconcile created new ones, tgtd then refused to exit and
    was SIGKILLed 5 s later with LUNs open, and the log had a burst of "exporting disk
    ... failed". Now the re-export ends at its next disk once the stop has begun, the stop
    waits for that, then closes every LUN that was exported. tgtadm is slowed (while a
    marker exists) so that SIGTERM surely comes during the re-export."""
    slow = tmp_path / "slow"
    tgtadm = slow_when(slow, tmp_path / "tgtadm", "/usr/sbin/tgtadm", 0.05)
    a = appliance(extra={"iscsi": [f"tgtadm_path = {tgtadm}"]}).start()
    names = [f"x{i}" for i in range(4)]
    for n in names:
        assert a.cli("disk", "create", n, "--image", "deb").returncode == 0
    old = a.tgtd_pid()
    slow.touch()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: "tgtd restarted; re-exporting disks" in full_log(a), 20,
                      step=0.01), a.log_text()
    rc, took = stop_timed(a)
    log = full_log(a).split("tgtd restarted; re-exporting disks", 1)[1]
    assert rc == 0, log
    assert "did not exit" not in log and "exporting disk" not in log, log
    exported = sum(f"exported disk {n} as target" in log for n in names)
    assert exported == len(names) or (
        f"the reconcile ends with {len(names) - exported} of {len(names)} disks not "
        "looked at" in log), log
    assert f"stopping tgtd: {exported} of {exported} targets deleted" in log, log
    assert took < 15, (took, log)


def test_sigterm_while_a_restarted_tgtd_starts(appliance, tmp_path):
    """SIGTERM while a restarted tgtd was not yet answering: stop found no targets to
    delete, tgtd could not be asked to exit, and it was SIGKILLed after 5 s (meanwhile it
    came up and the disks were exported again). Now the supervisor gives up on a tgtd that
    is still starting (it has no LUN yet) and the re-export does not run."""
    slow = tmp_path / "slow"
    tgtd = slow_when(slow, tmp_path / "tgtd", "/usr/sbin/tgtd", 3)
    a = appliance(extra={"iscsi": [f"tgtd_path = {tgtd}"]}).start()
    assert a.cli("disk", "create", "y1", "--image", "deb").returncode == 0
    old = a.tgtd_pid()
    slow.touch()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: full_log(a).count("tgtd started (pid") == 2, 20, step=0.01), \
        a.log_text()
    rc, took = stop_timed(a)
    log = full_log(a)
    assert rc == 0, log
    assert took < 2, (took, log)
    assert "did not exit" not in log and "re-exporting" not in log, log
    assert "exited at start" not in log and "did not become ready" not in log, log


OVERLAY_HOLES, OVERLAY_UNCLEAN = 0x1, 0x2


@pytest.fixture
def tmpfs():
    """tmpfs(path) mounts a tmpfs without huge pages at path: an overlay created there is
    HOLES, so its UNCLEAN flag tells a clean close from a kill (cache/overlay.c, invariant
    9), whatever filesystem /tmp is. Unmounted at teardown; request it before `appliance`
    so that the appliances have stopped by then."""
    done = []

    def mount(path):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,huge=never,mode=0700",
                        "tmpfs", path], check=True)
        done.append(path)
        return path

    yield mount
    for p in reversed(done):
        if subprocess.run(["umount", p]).returncode != 0:
            subprocess.run(["umount", "-l", p])


def overlay_flags(disk_dir):
    """The flags of the newest valid header of a disk's overlay.map (cache/overlay_format.h:
    two 4096-byte slots, each magic, ..., gen at byte 24, ..., flags at 88, and at 112 the
    SHA-256 of the bytes before it). On a HOLES overlay UNCLEAN is set while a writer (the
    LUN in tgtd) holds it open, and only a clean close clears it."""
    with open(os.path.join(disk_dir, "overlay.map"), "rb") as f:
        head = f.read(2 * 4096)
    best = None
    for off in (0, 4096):
        h = head[off:off + 144]
        if h[:8] != b"RDOVMAP\0" or hashlib.sha256(h[:112]).digest() != h[112:144]:
            continue
        (gen,), (flags,) = struct.unpack_from("<Q", h, 24), struct.unpack_from("<I", h, 88)
        if best is None or gen > best[0]:
            best = (gen, flags)
    assert best, f"no valid header in {disk_dir}/overlay.map"
    return best[1]


def start_stalled_read(a, seed, name):
    """Disk name with nothing cached, the seed swapped for one that never answers, and a
    READ of its first blocks (iscsi_cmd, one command, no retry) waiting on that chunk.
    Returns (stalled seed, the iscsi_cmd process)."""
    nginx, _ = seed
    assert a.cli("disk", "create", name, "--image", "deb").returncode == 0
    nginx.stop()
    stalled = StalledSeed(nginx.port)
    read = subprocess.Popen([ISCSI_CMD, a.url(name), "read", "0", "8"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The fetch has reached the seed: the READ now waits on its chunk.
        assert wait_until(lambda: stalled.accepted > 0 or read.poll() is not None, 15)
        time.sleep(0.5)
        assert read.poll() is None, (finish(read, 1), a.log_text())
    except BaseException:
        finish(read, 1)
        stalled.close()
        raise
    return stalled, read


def finish(proc, timeout):
    """(stdout, stderr) of proc once it exits, killing it after timeout seconds (a READ
    whose tgtd was killed under it is not answered)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return out, err + f"\n(killed: no answer within {timeout} s)"


def test_sigterm_while_a_read_waits_on_a_chunk_closes_every_lun(tmpfs, appliance, seed):
    """SIGTERM while a READ waited on a chunk: the module retried the fetch socket's
    ESHUTDOWN until the command's deadline (io_timeout_ms), so tgtd called the LUN "still
    active", no target could be deleted, and tgtd was SIGKILLed after 5 s with its LUN
    open (overlay not closed cleanly). Now, with a spawned tgtd, every fetch ends at
    once with EAGAIN: the READ ends with BUSY (the initiator retries against the next
    rackdiskd), the target is deleted, the LUN closed cleanly, well within io_timeout_ms."""
    a = appliance(extra={"iscsi": ["io_timeout_ms = 20000"]})
    ddir = os.path.join(tmpfs(os.path.join(a.state, "disks")), "w1")
    a.start()
    stalled, read = start_stalled_read(a, seed, "w1")
    with stalled:
        flags = overlay_flags(ddir)
        assert flags & OVERLAY_HOLES, "the overlay on tmpfs is not HOLES"
        assert flags & OVERLAY_UNCLEAN, "the LUN does not hold the overlay open"
        rc, took = stop_timed(a)
        out, err = finish(read, 15)
    log = full_log(a)
    assert rc == 0, log
    assert "stopping tgtd: 1 of 1 targets deleted (their LUNs closed)" in log, log
    assert "still active" not in log and "did not exit" not in log, log
    assert took < 5, (took, log)
    # BUSY, not MEDIUM ERROR: the initiator retries, against the restarted appliance.
    assert read.returncode == 0 and json.loads(out)["status"] == "BUSY", (out, err)
    assert not overlay_flags(ddir) & OVERLAY_UNCLEAN, "the overlay was not closed cleanly"


def test_sigterm_with_an_external_tgtd_leaves_a_waiting_read_to_the_next_daemon(
        appliance, seed, tmp_path):
    """With [iscsi] tgtd = external a stop keeps the targets in that tgtd, and a READ
    waiting on a chunk keeps waiting (the fetch socket answers ESHUTDOWN, which the module
    retries until io_timeout_ms): the stop does not end it with BUSY as it does for a
    spawned tgtd, and a rackdiskd started again in time serves it."""
    from tgt_helpers import Tgtd
    tgtd = Tgtd(tmp_path / "tgtd").start()
    try:
        a = appliance(extra={"iscsi": ["io_timeout_ms = 20000"]})
        a.portal_port, a.control_port = tgtd.port, tgtd.control_port
        a.write_conf()
        with open(a.conf) as f:
            conf = f.read().replace("tgtd = spawn", f"tgtd = external\nipc_socket = {tgtd.ipc}")
        with open(a.conf, "w") as f:
            f.write(conf)
        a.start()
        stalled, read = start_stalled_read(a, seed, "e1")
        with stalled:
            rc, took = stop_timed(a)
            assert rc == 0 and took < 5, (rc, took, full_log(a))
            time.sleep(1)
            assert read.poll() is None, (finish(read, 1), full_log(a))
            assert "e1" in tgtd.adm("--op", "show", "--mode", "target").stdout
        nginx, _ = seed
        nginx.start()
        a.start()
        out, err = finish(read, 30)
        assert read.returncode == 0 and json.loads(out)["status"] == "GOOD", (out, err)
    finally:
        tgtd.cleanup()


def test_rm_force_while_a_read_waits_on_a_chunk_says_so(appliance, seed):
    """`disk rm --force` while a READ waited on a chunk answered "in use by an initiator
    session; log it out or delete with force", although force was given: tgtd refuses to
    delete a LUN with a command running ("this logical unit is still active"). The
    message now says that, and once the command has ended (BUSY at io_timeout_ms) the
    same rm succeeds."""
    a = appliance(extra={"iscsi": ["io_timeout_ms = 4000"]}).start()
    stalled, read = start_stalled_read(a, seed, "w2")
    with stalled:
        p = a.cli("disk", "rm", "w2", "--force")
        assert read.poll() is None, "the READ ended before the rm: nothing was tested"
        assert p.returncode == 1, p.stderr
        assert p.stderr.strip() == (
            "rackdisk: a command is still running on disk 'w2' (waiting on a chunk, for at "
            "most [iscsi] io_timeout_ms); retry"), p.stderr
        out, err = finish(read, 15)
        assert json.loads(out)["status"] == "BUSY", (out, err)
        p = a.cli("disk", "rm", "w2", "--force")
        assert p.returncode == 0, p.stderr
    assert a.targets() == {}


def test_sighup_reconciles(appliance):
    a = appliance().start()
    assert a.cli("disk", "create", "h1", "--image", "deb").returncode == 0
    (tid,) = a.targets()
    assert a.tgtadm("--op", "delete", "--mode", "target", "--tid", str(tid),
                    "--force").returncode == 0
    assert a.targets() == {}
    a.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(a.targets()) == 1, 10), a.log_text()


def acl_and_accounts(a, tid):
    """(ACL entries, incoming CHAP accounts) of target tid, from tgtadm's show."""
    out, acl, acc, sec, cur = a.tgtadm("--op", "show", "--mode", "target").stdout, [], [], None, None
    for line in out.splitlines():
        if line.startswith("Target "):
            cur = int(line.split()[1].rstrip(":"))
            sec = None
        elif line.startswith("    ") and not line.startswith("     "):
            sec = line.strip()
        elif cur == tid and line.strip():
            {"ACL information:": acl, "Account information:": acc}.get(sec, []).append(
                line.strip())
    return acl, acc


def test_sighup_restores_a_targets_access(appliance):
    """Reconcile compared a target's tid, name and backing store, not who may use it: an
    ACL opened to ALL or a CHAP account unbound (an operator's tgtadm, or a crash between
    export steps) stayed so. Now such a target is replaced by the record's."""
    a = appliance().start()
    assert a.request("POST", "/api/v1/disks", {
        "name": "acl1", "image": "deb", "initiators": ["iqn.2026-01.example:host-a"],
        "chap": {"user": "acluser", "password": "acl-secret-1234"}})[0] == 201
    (tid,) = a.targets()
    want = (["iqn.2026-01.example:host-a"], ["acluser"])
    assert acl_and_accounts(a, tid) == want
    for args in (("--op", "bind", "--mode", "target", "--tid", str(tid),
                  "--initiator-address", "ALL"),
                 ("--op", "unbind", "--mode", "account", "--tid", str(tid),
                  "--user", "acluser")):
        assert a.tgtadm(*args).returncode == 0
    assert acl_and_accounts(a, tid) == (["ALL", "iqn.2026-01.example:host-a"], [])
    a.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: acl_and_accounts(a, tid) == want, 10), \
        (acl_and_accounts(a, tid), a.log_text())
    assert list(a.targets()) == [tid]


def test_systemd_notify_ready_and_stopping(appliance, tmp_path, monkeypatch):
    """rackdiskd.service is Type=notify: READY=1 once the API answers, STOPPING=1 at
    SIGTERM, on $NOTIFY_SOCKET (here an abstract datagram socket the test owns)."""
    name = f"rdtest-notify-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        a = appliance().start()
        assert sock.recv(256) == b"READY=1"
        assert a.health()["status"] == "ok"
        a.proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert a.proc.wait(30) == 0
    finally:
        sock.close()


def test_systemd_unit_verifies(tmp_path):
    """The unit `make install` installs passes systemd-analyze verify (with the binary
    where this build has it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    with open(os.path.join(root, "appliance", "rackdiskd.service")) as f:
        unit = f.read()
    assert "Type=notify" in unit and "ExecStartPre" not in unit
    path = tmp_path / "rackdiskd.service"
    path.write_text(unit.replace("/usr/local/sbin/rackdiskd", RACKDISKD))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_make_install_layout(tmp_path):
    """`make install` puts the unit where systemd finds vendor units (so a copy in
    /etc/systemd/system, needed for tgtd = external, survives the next install), with
    ExecStart under PREFIX, and with DESTDIR does not touch the running system."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for prefix in ("/usr/local", "/opt/rd"):
        dest = tmp_path / prefix.strip("/").replace("/", "_")
        r = subprocess.run(["make", "-s", "-C", root, "install", f"DESTDIR={dest}",
                            f"PREFIX={prefix}"], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        unit = dest / prefix.strip("/") / "lib/systemd/system/rackdiskd.service"
        text = unit.read_text()
        assert f"ExecStart={prefix}/sbin/rackdiskd --config /etc/rackdisk/rackdisk.conf" in text
        assert not (dest / "etc/systemd").exists()
        for f in (f"{prefix}/sbin/rackdiskd", f"{prefix}/bin/rackdisk",
                  "usr/lib/tgt/backing-store/bs_rackdisk.so",
                  "etc/rackdisk/rackdisk.conf.example",
                  f"{prefix}/share/doc/rackdisk/README.md"):
            assert (dest / f.strip("/")).is_file(), f
        assert "restart" not in r.stdout  # no daemon-reload or advice with DESTDIR


def test_metrics_serves_required_series(appliance, tmp_path):
    a = appliance().start()
    assert a.cli("disk", "create", "m1", "--image", "deb").returncode == 0
    r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", a.url("m1"),
                        str(tmp_path / "m1.raw")], capture_output=True, timeout=120)
    assert r.returncode == 0
    st, text = a.request("GET", "/metrics")
    assert st == 200
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            values[k] = float(v)
    for src in ("local", "peer", "seed"):
        assert f'rackdisk_chunk_fetches_total{{source="{src}"}}' in values
        assert f'rackdisk_chunk_fetch_bytes_total{{source="{src}"}}' in values
        assert f'rackdisk_chunk_fetch_duration_seconds_bucket{{source="{src}",le="+Inf"}}' \
            in values
    # The cold read came from the seed: counted, with its bytes and latencies.
    fetched = values['rackdisk_chunk_fetches_total{source="seed"}']
    assert fetched > 0
    assert values['rackdisk_chunk_fetch_bytes_total{source="seed"}'] >= fetched * 1024
    assert values['rackdisk_chunk_fetch_duration_seconds_count{source="seed"}'] == fetched
    assert values["rackdisk_cache_used_bytes"] > 0
    for k in ("rackdisk_cache_capacity_bytes", "rackdisk_cache_evictions_total",
              "rackdisk_cache_hits_total", "rackdisk_cache_misses_total", "rackdisk_disks"):
        assert k in values
    assert values["rackdisk_disks"] == 1
    # Every family served is in the README's metrics table (and typed as there).
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "README.md")) as f:
        documented = dict(re.findall(r"^\| `(rackdisk_[a-z_]+)` \| (\w+) \|", f.read(), re.M))
    served = dict(re.findall(r"^# TYPE (rackdisk_[a-z_]+) (\w+)$", text, re.M))
    assert served and {k: v for k, v in served.items() if documented.get(k) != v} == {}
    # The cold read's misses told the readahead where the reader was.
    assert values["rackdisk_readahead_hints_total"] > 0
    assert values["rackdisk_readahead_hints_ignored_total"] == 0
    assert 'rackdisk_disk_read_bytes_total{disk="m1"}' in values
    # Per-disk IO comes from tgtd's counters of the sessions logged in: hold one open.
    with QemuIo(a.url("m1")) as q:
        q.cmd("read 0 256k")

        def io_seen():
            # The initiator's own probing (INQUIRY, READ CAPACITY, ...) counts too.
            t = a.request("GET", "/metrics")[1]
            m = re.search(r'^rackdisk_disk_read_bytes_total\{disk="m1"\} (\d+)$', t, re.M)
            return m is not None and int(m.group(1)) >= 262144
        assert wait_until(io_seen, 15), a.request("GET", "/metrics")[1][-800:]
    st, cache = a.request("GET", "/api/v1/cache")
    assert cache["fetch"]["seed"]["fetches"] == fetched


def test_chunk_rotted_while_stopped_is_never_served(appliance, seed, tmp_path):
    """A chunk file damaged while rackdiskd was stopped (same length, other bytes): after a
    clean restart the owner does not re-hash its store, so the tgt module checks each file
    the new session does not vouch for (chunkstore.c invariant 1a), tells rackdiskd
    (CHECK), which drops it, and the read gets a fresh copy from the seed."""
    _, raws = seed
    img = open(raws["deb"], "rb").read()
    a = appliance().start()
    assert a.cli("disk", "create", "c1", "--image", "deb").returncode == 0

    def read_all(name):
        out = tmp_path / name
        r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", a.url("c1"),
                            str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr + a.log_text()
        return open(out, "rb").read()

    assert read_all("cold.raw")[:len(img)] == img
    assert a.stop() == 0
    chunks = os.path.join(a.state, "cache", "chunks")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(chunks) for f in fs)
    assert files
    victim = files[0]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.write(bytes([0xA5]) * size)
    time.sleep(0.05)  # the file's change time stays before the next session's start
    a.start()
    got = read_all("after.raw")
    assert got[:len(img)] == img, "a damaged chunk file was served"
    st, text = a.request("GET", "/metrics")
    values = dict(l.rsplit(" ", 1) for l in text.splitlines() if l and not l.startswith("#"))
    assert float(values["rackdisk_chunk_corrupt_reports_total"]) >= 1, text
    assert float(values['rackdisk_chunk_fetches_total{source="seed"}']) >= 1, text
    assert os.path.getsize(victim) == size and open(victim, "rb").read(16) != bytes([0xA5]) * 16


def test_fsck_offline(appliance):
    a = appliance().start()
    assert a.cli("disk", "create", "f1", "--image", "deb").returncode == 0
    a.request("POST", "/api/v1/images", {"tag": "deb"})
    # --repair is refused while the daemon owns the store.
    p = a.cli("fsck", "--config", a.conf, "--repair")
    assert p.returncode == 1 and "rackdiskd is running" in p.stderr
    # The check alone runs beside the daemon (the README's recovery of a damaged record
    # does that): the exported disk's overlay, held by tgtd, is skipped, not a problem
    # (it was "overlay check failed: in use", exit 1, for every exported disk).
    p = a.cli("fsck", "--config", a.conf)
    assert p.returncode == 0, p.stdout + p.stderr
    f1 = os.path.join(a.state, "disks", "f1")
    assert f"{f1}: skipped: overlay in use by a running tgtd" in p.stdout, p.stdout
    assert "0 problem(s), 1 disk(s) skipped" in p.stdout, p.stdout
    p = a.cli("--json", "fsck", "--config", a.conf)
    assert p.returncode == 0, p.stdout + p.stderr
    j = json.loads(p.stdout)
    assert j["problems"] == [] and [x["path"] for x in j["skipped"]] == [f1], j
    assert "in use by a running tgtd" in j["skipped"][0]["reason"], j
    assert a.stop() == 0
    p = a.cli("fsck", "--config", a.conf)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 disk(s)" in p.stdout and "0 problem(s)" in p.stdout
    assert "skipped" not in p.stdout, p.stdout
    # A damaged record is reported.
    with open(os.path.join(a.state, "disks", "f1", "disk.json"), "w") as f:
        f.write("{")
    p = a.cli("fsck", "--cache", os.path.join(a.state, "cache"), "--state", a.state)
    assert p.returncode == 1 and "disk.json" in p.stdout
    # --json: one object, the same finding, the same exit
    p = a.cli("--json", "fsck", "--config", a.conf)
    assert p.returncode == 1, p.stdout + p.stderr
    j = json.loads(p.stdout)
    assert j["disks"] == 1 and j["repair"] is False and len(j["problems"]) == 1, j
    assert j["skipped"] == [], j
    assert j["problems"][0]["path"].endswith("/disks/f1"), j
    assert "disk.json" in j["problems"][0]["problem"], j
    # Entries of the disks directory that are not disks: lost+found (disks/ as a file
    # system's root) is no problem; a leftover of an interrupted create and anything
    # else are each reported as what they are.
    for d in ("lost+found", ".new-f2", "not a disk"):
        os.makedirs(os.path.join(a.state, "disks", d))
    p = a.cli("--json", "fsck", "--config", a.conf)
    assert p.returncode == 1, p.stdout + p.stderr
    probs = {os.path.basename(x["path"]): x["problem"] for x in json.loads(p.stdout)["problems"]}
    assert "lost+found" not in probs, probs
    assert "interrupted create" in probs[".new-f2"], probs
    assert "not a disk" in probs["not a disk"], probs


def nexuses(a, tid):
    """I_T nexuses (logged-in sessions) of target tid, from tgtadm's show."""
    out, cur, n = a.tgtadm("--op", "show", "--mode", "target").stdout, None, 0
    for line in out.splitlines():
        if line.startswith("Target "):
            cur = int(line.split()[1].rstrip(":"))
        elif cur == tid and line.strip().startswith("I_T nexus:"):
            n += 1
    return n


def reconciled(a, before):
    """Waits until rackdiskd has reconciled more than `before` times."""
    return wait_until(lambda: a.health()["reconciles"] > before, 15)


def test_damaged_record_keeps_the_disk_exported(appliance):
    """A disk.json that could not be read made reconcile (SIGHUP, a tgtd restart, a start
    with an external tgtd) remove the disk's target as stale, cutting its initiators off;
    the disk then vanished from GET disks and its tid went to the next create. Now the
    disk is kept as it is: its target and tid stay, it is listed as damaged (GET disks,
    health, an error in the log naming the file), and it comes back once the record is
    restored, no other disk's target touched."""
    a = appliance().start()
    for n in ("k1", "k2"):
        assert a.cli("disk", "create", n, "--image", "deb").returncode == 0
    before = a.targets()
    (tid1,) = [t for t, iqn in before.items() if iqn.endswith(":k1")]
    (tid2,) = [t for t, iqn in before.items() if iqn.endswith(":k2")]
    rec = os.path.join(a.state, "disks", "k1", "disk.json")
    with open(rec) as f:
        good = f.read()
    with QemuIo(a.url("k1")) as q:
        q.cmd("read 0 64k")
        assert "read 65536/65536" in "".join(q.read_lines(2))
        assert nexuses(a, tid1) == 1
        with open(rec, "w") as f:
            f.write(good[:len(good) // 2])
        n = a.health()["reconciles"]
        a.proc.send_signal(signal.SIGHUP)
        assert reconciled(a, n), a.log_text()
        # the target and its session stay
        assert a.targets() == before, a.log_text()
        assert nexuses(a, tid1) == 1
        q.cmd("read 64k 64k")
        assert "read 65536/65536" in "".join(q.read_lines(2))
    log = a.log_text()
    assert "removing stale target" not in log
    assert rec in log and "rackdisk fsck" in log, log
    # reported where an operator looks
    st, disks = a.request("GET", "/api/v1/disks")
    assert st == 200 and [(d["name"], d["state"]) for d in disks] == \
        [("k1", "damaged"), ("k2", "ok")], disks
    assert disks[0]["tid"] == tid1 and "disk.json" in disks[0]["error"], disks
    h = a.health()
    assert h["damaged_disks"] == 1 and h["status"] == "degraded", h
    st, text = a.request("GET", "/metrics")
    assert st == 200 and "\nrackdisk_disks_damaged 1\n" in text, text
    p = a.cli("disk", "ls")
    line = next(l for l in p.stdout.splitlines() if l.startswith("k1 "))
    assert "DAMAGED" in line and "disk.json" in line, p.stdout
    # what the log tells the operator to run names the file
    p = a.cli("--json", "fsck", "--config", a.conf)
    assert p.returncode == 1 and [
        (os.path.basename(x["path"]), "disk.json" in x["problem"])
        for x in json.loads(p.stdout)["problems"]] == [("k1", True)], p.stdout + p.stderr
    assert sorted(os.path.basename(x["path"]) for x in json.loads(p.stdout)["skipped"]) == \
        ["k1", "k2"], p.stdout
    # its name and tid stay taken
    st, body = a.request("POST", "/api/v1/disks", {"name": "K1", "image": "deb"})
    assert st == 409, body
    st, d3 = a.request("POST", "/api/v1/disks", {"name": "k3", "image": "deb"})
    assert st == 201 and d3["tid"] not in before, d3
    # a tgtd restart: the damaged disk cannot be exported (its ACL is in the record), the
    # others are; its tid is still not given to a new disk
    old = a.tgtd_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: a.tgtd_pid() not in (0, old), 15), a.log_text()
    want = {t: i for t, i in before.items() if t != tid1}
    want[d3["tid"]] = d3["iqn"]
    assert wait_until(lambda: a.tgtadm("--op", "show", "--mode", "target").returncode == 0
                      and a.targets() == want, 15), a.log_text()
    st, d4 = a.request("POST", "/api/v1/disks", {"name": "k4", "image": "deb"})
    assert st == 201 and d4["tid"] != tid1, d4
    want[d4["tid"]] = d4["iqn"]
    st, disks = a.request("GET", "/api/v1/disks")
    assert disks[0]["name"] == "k1" and disks[0]["tid"] == tid1, disks
    # repaired: back to normal, every other target as it was
    with open(rec, "w") as f:
        f.write(good)
    n = a.health()["reconciles"]
    a.proc.send_signal(signal.SIGHUP)
    assert reconciled(a, n), a.log_text()
    want[tid1] = before[tid1]
    assert a.targets() == want, a.log_text()
    st, disks = a.request("GET", "/api/v1/disks")
    assert [(d["name"], d["state"], d["tid"]) for d in disks] == \
        [("k1", "ok", tid1), ("k2", "ok", tid2), ("k3", "ok", d3["tid"]),
         ("k4", "ok", d4["tid"])], disks
    h = a.health()
    assert h["damaged_disks"] == 0 and h["status"] == "ok", h
    assert "\nrackdisk_disks_damaged 0\n" in a.request("GET", "/metrics")[1]
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 64k", a.url("k1")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "read 65536/65536" in r.stdout, r.stdout + r.stderr


def test_initiator_alias_cannot_make_reconcile_remove_another_disk(appliance):
    """tgtd prints a session's InitiatorAlias as it came, so an initiator let into one disk
    could add a line "Target <tid of another disk>: <some name>" to the listing; the
    reconcile took the other disk's real target as stale and deleted it (force), cutting
    its initiators off. Now a listing not in tgt's exact shape is refused with an error
    that says why, nothing is removed, and once that session is gone the next reconcile
    works as before."""
    iscsi_cmd = os.path.join(os.path.dirname(RACKDISKD), "tests", "iscsi_cmd")
    a = appliance().start()
    for n in ("j1", "j2"):
        assert a.cli("disk", "create", n, "--image", "deb").returncode == 0
    before = a.targets()
    (tid2,) = [t for t, iqn in before.items() if iqn.endswith(":j2")]
    prefix = before[tid2].rsplit(":", 1)[0]
    alias = f"x\nTarget {tid2}: {prefix}:nosuchdisk"
    holder = subprocess.Popen([iscsi_cmd, a.url("j1"), "hold", "60"], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, ISCSI_CMD_ALIAS=alias))
    try:
        assert "LOGGED_IN" in holder.stdout.readline(), holder.stderr.read()
        assert f"Target {tid2}: {prefix}:nosuchdisk" in a.tgtadm(
            "--op", "show", "--mode", "target").stdout  # the line is there
        a.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "not in the shape tgt prints" in a.log_text(), 15), \
            a.log_text()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    log = a.log_text()
    assert "removing stale target" not in log, log
    assert "not in the shape tgt prints" in log, log
    assert wait_until(lambda: a.targets() == before, 15), (a.targets(), before)
    with QemuIo(a.url("j2")) as q:
        q.cmd("read 0 64k")
        assert "read 65536/65536" in "".join(q.read_lines(2))
    # the session gone, the listing is whole again: a reconcile succeeds
    n = a.health()["reconciles"]
    a.proc.send_signal(signal.SIGHUP)
    assert reconciled(a, n), a.log_text()
    assert a.log_text().count("not in the shape tgt prints") == log.count(
        "not in the shape tgt prints"), a.log_text()


def scsi_identity(url):
    """(serial number, VPD 0x83 designators) as an initiator reads them."""
    out = []
    for page in ("128", "131"):  # 0x80, 0x83 (iscsi-inq takes decimal)
        p = subprocess.run(["iscsi-inq", "-e", "1", "-c", page, url], capture_output=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        # iscsi-inq prints the NAA designators' bytes as they are
        out.append(p.stdout.decode(errors="backslashreplace"))
    return tuple(out)


def test_every_disk_has_its_own_scsi_identity(appliance):
    """tgt derives a LUN's serial number and NAA designators from its target id unless
    told otherwise, so a new disk that got a deleted disk's tid (and every appliance's
    first disk) looked to hosts and dm-multipath like the same device. Each disk now
    has a random SCSI id, kept in its record, the same across restarts; a record from
    before gets one at its next export, kept from then on."""
    a = appliance().start()
    assert a.cli("disk", "create", "s1", "--image", "deb").returncode == 0
    tid1 = json.loads(a.cli("--json", "disk", "show", "s1").stdout)["tid"]
    first = scsi_identity(a.url("s1"))
    assert a.cli("disk", "rm", "s1").returncode == 0
    assert a.cli("disk", "create", "s2", "--image", "deb").returncode == 0
    d2 = json.loads(a.cli("--json", "disk", "show", "s2").stdout)
    assert d2["tid"] == tid1  # the tid is reused ...
    second = scsi_identity(a.url("s2"))
    assert first[0] != second[0] and first[1] != second[1], (first, second)  # ... not its id
    assert re.fullmatch(r"[0-9a-f]{32}", d2["scsi_id"]), d2
    assert d2["scsi_id"] in second[0], second[0]
    # the same after a restart of rackdiskd (and of its tgtd)
    a.stop()
    a.start()
    assert scsi_identity(a.url("s2")) == second
    # a record without one (written by an older rackdiskd) gets one, kept from then on
    rec = os.path.join(a.state, "disks", "s2", "disk.json")
    a.stop()
    with open(rec) as f:
        j = json.load(f)
    del j["scsi_id"]
    with open(rec, "w") as f:
        json.dump(j, f)
    a.start()
    third = scsi_identity(a.url("s2"))
    assert third[0] != second[0]
    with open(rec) as f:
        kept = json.load(f)["scsi_id"]
    assert kept in third[0] and "recorded SCSI id" in a.log_text(), a.log_text()
    a.stop()
    a.start()
    assert scsi_identity(a.url("s2")) == third


def chap_login_ok(a, name, user, password):
    url = a.url(name).replace("iscsi://", f"iscsi://{user}%{password}@", 1)
    return subprocess.run(["iscsi-readcapacity16", url], capture_output=True,
                          timeout=30).returncode == 0


def test_sighup_sets_a_changed_chap_password(appliance):
    """tgtadm cannot show an account's password, and the reconcile compared user names
    only: a password changed in the record (the fix for a damaged record the log gives,
    or a rotation) was never given to tgtd; the old one went on working. Now a SIGHUP
    sets it, with the target's ACL taken away meanwhile (a target with no account bound
    lets anyone in), and a logged-in session stays."""
    a = appliance().start()
    assert a.request("POST", "/api/v1/disks", {
        "name": "ch1", "image": "deb",
        "chap": {"user": "chuser", "password": "oldpassword1"}})[0] == 201
    (tid,) = a.targets()
    assert chap_login_ok(a, "ch1", "chuser", "oldpassword1")
    assert not chap_login_ok(a, "ch1", "chuser", "newpassword2")
    rec = os.path.join(a.state, "disks", "ch1", "disk.json")
    with open(rec) as f:
        j = json.load(f)
    j["chap_password"] = "newpassword2"
    url = a.url("ch1").replace("iscsi://", "iscsi://chuser%oldpassword1@", 1)
    with QemuIo(url) as q:
        q.cmd("read 0 64k")  # logged in
        assert "read 65536/65536" in "".join(q.read_lines(2))
        assert nexuses(a, tid) == 1
        with open(rec, "w") as f:
            json.dump(j, f)
        n = a.health()["reconciles"]
        a.proc.send_signal(signal.SIGHUP)
        assert reconciled(a, n), a.log_text()
        assert nexuses(a, tid) == 1, a.log_text()  # the session stays
        q.cmd("read 64k 64k")
        assert "read 65536/65536" in "".join(q.read_lines(2))
    assert chap_login_ok(a, "ch1", "chuser", "newpassword2"), a.log_text()
    assert not chap_login_ok(a, "ch1", "chuser", "oldpassword1")
    assert acl_and_accounts(a, tid) == (["ALL"], ["chuser"])
    assert "CHAP account chuser given the password in its record" in a.log_text()
    # an unchanged record: nothing is set again
    n = a.health()["reconciles"]
    a.proc.send_signal(signal.SIGHUP)
    assert reconciled(a, n)
    assert a.log_text().count("given the password in its record") == 1


def deleted_chunk_fds(pid, cache_dir):
    """Descriptors the process holds of chunk files removed from cache_dir (evicted)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(cache_dir) and target.endswith(" (deleted)"):
            n += 1
    return n


def test_evicted_chunks_are_not_kept_open_by_an_idle_disk(tmp_path):
    """A 16 MiB cache, two 40 MiB images (about 16 MiB of data each): reading a disk of the
    second evicts chunks the first disk read. tgtd's descriptors of them keep their space
    allocated past the cache's capacity; the module's sweep closes them while nothing reads
    (the disk's own descriptors used to stay until a read reused their slot, the chunk
    store reader's until its next lookup)."""
    install_module()
    nginx, raws = make_seed(tmp_path / "seed", tags=(("one", 40, 1), ("two", 40, 2)))
    a = Appliance(nginx.url)
    with open(a.conf) as f:
        conf = f.read()
    with open(a.conf, "w") as f:
        f.write(conf.replace("size = 1G\n", "size = 16M\n"))
    try:
        a.start()
        for disk, tag in (("e1", "one"), ("e2", "two")):
            assert a.cli("disk", "create", disk, "--image", tag).returncode == 0
            out = tmp_path / f"{disk}.raw"
            r = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", a.url(disk),
                                str(out)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr + a.log_text()
            assert filecmp.cmp(out, raws[tag], shallow=False)
        st, text = a.request("GET", "/metrics")
        evictions = [l for l in text.splitlines()
                     if l.startswith("rackdisk_cache_evictions_total ")]
        assert evictions and float(evictions[0].split()[1]) > 0, text
        cache = os.path.join(a.state, "cache")
        tgtd = a.tgtd_pid()
        assert wait_until(lambda: deleted_chunk_fds(tgtd, cache) == 0, 8), \
            f"tgtd keeps {deleted_chunk_fds(tgtd, cache)} evicted chunk files open"
    finally:
        a.cleanup()
        nginx.stop()


def failing_when(marker, path, program, *needles):
    """Writes an executable at path that runs program, or, while marker exists and its
    arguments hold every one of needles, fails as tgtadm does (a message, exit 22)."""
    path.write_text("#!/usr/bin/python3\nimport os, sys\n"
                    f"if os.path.exists({str(marker)!r}) and all(\n"
                    f"        n in sys.argv[1:] for n in {list(needles)!r}):\n"
                    "    sys.stderr.write('tgtadm: injected failure\\n')\n"
                    "    sys.exit(22)\n"
                    f"os.execv({program!r}, [{program!r}] + sys.argv[1:])\n")
    path.chmod(0o755)
    return str(path)


def accounts(a):
    """CHAP accounts tgtd holds (tgtadm --mode account --op show)."""
    r = a.tgtadm("--op", "show", "--mode", "account")
    assert r.returncode == 0, r.stderr
    return sorted(l.strip() for l in r.stdout.splitlines()[1:] if l.strip())


def create_chap_disk(a, name, user, password, **kw):
    return a.request("POST", "/api/v1/disks", {
        "name": name, "image": "deb", "chap": {"user": user, "password": password}, **kw})


def damage(a, name):
    rec = os.path.join(a.state, "disks", name, "disk.json")
    with open(rec, "r+") as f:
        f.truncate(len(f.read()) // 2)


def test_a_damaged_record_leaves_other_disks_chap_accounts_alone(appliance):
    """While any disk record was damaged, every CHAP account counted as shared with it: a
    SIGHUP left a password changed in another disk's record unset (the old one kept
    working, and the log said the account was named by another record), and deleting a
    disk left its account in tgtd, so a new disk with that user was a 409 until tgtd
    restarted. Now an account is shared only when another readable record names it or
    another live target binds it (the damaged disk's target keeps its own)."""
    a = appliance().start()
    for name, user, pw in (("cd1", "cu1", "oldpassword1"), ("cd2", "cu2", "secondpass22")):
        st, d = create_chap_disk(a, name, user, pw)
        assert st == 201, d
    tid2 = next(t for t, iqn in a.targets().items() if iqn.endswith(":cd2"))
    rec = os.path.join(a.state, "disks", "cd1", "disk.json")
    with open(rec) as f:
        j = json.load(f)
    j["chap_password"] = "newpassword2"
    with open(rec, "w") as f:
        json.dump(j, f)
    damage(a, "cd2")
    n = a.health()["reconciles"]
    a.proc.send_signal(signal.SIGHUP)
    assert reconciled(a, n), a.log_text()
    assert chap_login_ok(a, "cd1", "cu1", "newpassword2"), a.log_text()
    assert not chap_login_ok(a, "cd1", "cu1", "oldpassword1")
    assert "another disk's record too" not in a.log_text(), a.log_text()
    # the damaged disk's target is kept as it was, its account with it
    assert acl_and_accounts(a, tid2) == (["ALL"], ["cu2"])
    assert chap_login_ok(a, "cd2", "cu2", "secondpass22")
    assert not chap_login_ok(a, "cd2", "cu2", "wrongpassword3")
    # a delete takes its account with it: the user is free for a new disk
    st, body = a.request("DELETE", "/api/v1/disks/cd1")
    assert st == 200, body
    assert accounts(a) == ["cu2"], a.log_text()
    st, d = create_chap_disk(a, "cd3", "cu1", "thirdpassword3")
    assert st == 201, d
    assert chap_login_ok(a, "cd3", "cu1", "thirdpassword3")
    # so does a forced delete of the damaged disk (its account known from its target)
    st, body = a.request("DELETE", "/api/v1/disks/cd2?force=1")
    assert st == 200, body
    assert accounts(a) == ["cu1"], a.log_text()


def test_reconcile_deletes_chap_accounts_no_disk_uses(appliance):
    """A disk removed by hand (its directory deleted) left its CHAP account in tgtd when
    the reconcile removed its target, and the user could not be given to a new disk. Now
    the reconcile deletes the accounts it made that no record names and no target binds;
    an account of the operator's own (with an external tgtd there may be such) stays."""
    a = appliance().start()
    for name, user in (("hd1", "hu1"), ("hd2", "hu2")):
        st, d = create_chap_disk(a, name, user, "apassword123")
        assert st == 201, d
    damage(a, "hd2")  # a damaged record made every account count as shared
    assert a.tgtadm("--mode", "account", "--op", "new", "--user", "opuser",
                    "--password", "operator-secret1").returncode == 0
    shutil.rmtree(os.path.join(a.state, "disks", "hd1"))
    n = a.health()["reconciles"]
    a.proc.send_signal(signal.SIGHUP)
    assert reconciled(a, n), a.log_text()
    assert not [i for i in a.targets().values() if i.endswith(":hd1")], a.log_text()
    assert accounts(a) == ["hu2", "opuser"], a.log_text()
    st, d = create_chap_disk(a, "hd3", "hu1", "anotherpass12")
    assert st == 201, d


def test_a_create_that_fails_after_binding_chap_leaves_no_account(appliance, tmp_path):
    """A create whose ACL bind failed deleted the target but not the CHAP account it had
    just made, so the same create, retried, was refused: "tgtd already has a CHAP account
    named 'cu'". Now the account goes with the target and the retry succeeds."""
    fault = tmp_path / "fault"
    tgtadm = failing_when(fault, tmp_path / "tgtadm", "/usr/sbin/tgtadm", "--op", "bind",
                          "--initiator-name")
    a = appliance(extra={"iscsi": [f"tgtadm_path = {tgtadm}"]}).start()
    fault.touch()
    req = dict(initiators=["iqn.2026-01.example:host-a"])
    st, body = create_chap_disk(a, "cf1", "cu", "createpass12", **req)
    assert st == 502 and "injected failure" in body["error"], body
    assert a.targets() == {} and accounts(a) == [], a.log_text()
    fault.unlink()
    st, d = create_chap_disk(a, "cf1", "cu", "createpass12", **req)
    assert st == 201, d
    assert accounts(a) == ["cu"]


def metric(a, name):
    text = a.request("GET", "/metrics")[1]
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return m and float(m.group(1))


def test_a_disk_that_cannot_be_exported_is_reported_and_retried(appliance):
    """A disk whose export failed (here: its image's manifest copy gone at a restart) was
    logged once with tgtd's "tgtadm: invalid request", listed as "ok" with its URL, health
    said ok, and only a SIGHUP tried it again. Now the log names the missing file, GET
    disks says "not_exported" with why, health is degraded, rackdisk_disks_not_exported
    counts it, and rackdiskd exports it by itself once the file is back."""
    a = appliance().start()
    st, d = a.request("POST", "/api/v1/disks", {"name": "big", "image": "deb"})
    assert st == 201, d
    manifest = os.path.join(a.state, "images", d["image_id"] + ".json")
    a.stop()
    os.rename(manifest, manifest + ".away")
    a.start()
    log = a.log_text()
    assert f"exporting disk big (target {d['tid']}): the image's manifest copy {manifest}: " \
        "No such file or directory" in log, log
    assert a.targets() == {}
    st, disks = a.request("GET", "/api/v1/disks")
    assert [(x["name"], x["state"]) for x in disks] == [("big", "not_exported")], disks
    assert manifest in disks[0]["error"], disks
    st, one = a.request("GET", "/api/v1/disks/big")
    assert one["state"] == "not_exported" and manifest in one["error"], one
    h = a.health()
    assert h["status"] == "degraded" and h["not_exported_disks"] == 1, h
    assert h["damaged_disks"] == 0, h
    assert metric(a, "rackdisk_disks_not_exported") == 1
    assert metric(a, "rackdisk_export_failures_total") >= 1
    line = next(l for l in a.cli("disk", "ls").stdout.splitlines() if l.startswith("big "))
    assert "NOT EXPORTED" in line and manifest in line, line
    assert "NOT EXPORTED" in a.cli("disk", "show", "big").stdout
    # tried again, with a backoff, without a SIGHUP
    assert wait_until(lambda: "retrying the export of 1 disk(s)" in a.log_text(), 10), \
        a.log_text()
    n = a.health()["reconciles"]
    os.rename(manifest + ".away", manifest)
    assert wait_until(lambda: a.health()["not_exported_disks"] == 0, 30), a.log_text()
    assert a.health()["reconciles"] == n  # a retry, not a reconcile
    assert list(a.targets().values()) == [d["iqn"]]
    assert a.request("GET", "/api/v1/disks/big")[1]["state"] == "ok"
    assert a.health()["status"] == "ok"
    assert metric(a, "rackdisk_disks_not_exported") == 0
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 64k", a.url("big")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "read 65536/65536" in r.stdout, r.stdout + r.stderr


def test_a_failed_export_after_a_resize_is_reported_and_retried(appliance, tmp_path):
    """A resize whose export afterwards failed (tgtd refused the LUN) left the disk
    unexported, listed as "ok", until a SIGHUP. Now it is "not_exported" with tgtd's
    answer and is exported again once tgtd takes it."""
    fault = tmp_path / "fault"
    tgtadm = failing_when(fault, tmp_path / "tgtadm", "/usr/sbin/tgtadm", "--mode",
                          "logicalunit", "--op", "new")
    a = appliance(extra={"iscsi": [f"tgtadm_path = {tgtadm}"]}).start()
    st, d = a.request("POST", "/api/v1/disks", {"name": "rz", "image": "deb"})
    assert st == 201, d
    fault.touch()
    st, body = a.request("PATCH", "/api/v1/disks/rz", {"size": "64M"})
    assert st == 502 and "exporting it again failed" in body["error"], body
    st, one = a.request("GET", "/api/v1/disks/rz")
    assert one["state"] == "not_exported" and "injected failure" in one["error"], one
    assert one["size"] == 64 << 20
    assert a.health()["status"] == "degraded"
    fault.unlink()
    assert wait_until(lambda: a.request("GET", "/api/v1/disks/rz")[1]["state"] == "ok", 30), \
        a.log_text()
    assert list(a.targets().values()) == [d["iqn"]]
    assert a.health()["status"] == "ok"


def test_a_tgtd_without_the_rackdisk_backing_store_is_named_at_start(appliance, tmp_path):
    """A tgtd that has not loaded bs_rackdisk.so refuses every export with "tgtadm: invalid
    request". rackdiskd now says at start, and in the reason of a failed export, that tgtd
    lists no 'rackdisk' backing store (here tgtadm's listing leaves it out)."""
    tgtadm = tmp_path / "tgtadm"
    tgtadm.write_text("#!/usr/bin/python3\nimport subprocess, sys\n"
                      "r = subprocess.run(['/usr/sbin/tgtadm'] + sys.argv[1:],\n"
                      "                   capture_output=True, text=True)\n"
                      "out = r.stdout\n"
                      "if sys.argv[-4:] == ['--mode', 'system', '--op', 'show']:\n"
                      "    out = out.replace('\\n    rackdisk\\n', '\\n')\n"
                      "sys.stdout.write(out)\n"
                      "sys.stderr.write(r.stderr)\n"
                      "sys.exit(r.returncode)\n")
    tgtadm.chmod(0o755)
    a = appliance(extra={"iscsi": [f"tgtadm_path = {tgtadm}"]}).start()
    assert "tgtd lists no 'rackdisk' backing store" in a.log_text(), a.log_text()
