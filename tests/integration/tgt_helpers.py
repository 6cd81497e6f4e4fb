"""Helpers for the tgt module tests: a private tgtd, rackdisk disk directories built with
build/tests/mkdisk, and a fake rackdiskd fetch server.

- install_module() copies build/bs_rackdisk.so into tgt's module directory. tgtd's
  module directory is compiled in (BSDIR, /usr/lib/tgt/backing-store), so a private one
  is not possible; the copy is atomic (temp file + rename) so a running tgtd that has the
  old file mapped is not disturbed. A module that was there before (`make install`'s, or
  another tree's) is put back, the same way, when the process exits.
- Tgtd runs `tgtd -f` with its own TGT_IPC_SOCKET and control port (below 32768), a
  portal on 127.0.0.1:<free port> and rackdiskd's malloc settings for tgtd. stop() deletes every target first (so each LUN is
  closed, i.e. bs_close flushes the disk), then `tgtadm --op delete --mode system` (tgtd
  ignores SIGTERM), then SIGKILL if it is still there. kill() is SIGKILL.
- FetchServer speaks target/fetch_proto.h on a unix socket. mode "serve" makes a chunk
  present by writing its file atomically into the chunk store (chunks/<hh>/<hash>, the
  layout of DESIGN.md section 3) from a raw image; "slow" does the same `delay` seconds
  after each FETCH arrives (a seed or peer that serves, but slowly); "stall" never answers
  FETCH; "fail" answers ERR 5 (EIO). TOUCH and PREFETCH are answered OK in every mode and
  counted.
"""
import atexit
import hashlib
import json
import os
import random
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

from servers import BUILD, ROOT, free_port, wait_port

TGT_MODDIR = "/usr/lib/tgt/backing-store"
MODULE = os.path.join(BUILD, "bs_rackdisk.so")
MKDISK = os.path.join(BUILD, "tests", "mkdisk")
IQN_PREFIX = "iqn.2026-11.io.rackdisk.test"


def _tgtd_malloc_tunables():
    """The string literals of target/tgtmgr.c's TGTD_MALLOC_TUNABLES, joined."""
    with open(os.path.join(ROOT, "target", "tgtmgr.c")) as f:
        src = f.read()
    body = re.search(r"#define TGTD_MALLOC_TUNABLES((?:.*\\\n)*.*)", src).group(1)
    return "".join(re.findall(r'"([^"]*)"', body))


# The malloc settings rackdiskd gives the tgtd it spawns (target/tgtmgr.c,
# TGTD_MALLOC_TUNABLES: data buffers from a heap that is not trimmed, so no page faults
# per command). A private Tgtd gets them too, so the rdwr references of the benches run
# in a tgtd tuned exactly like the appliance's. Read from the source, so the two cannot
# drift apart.
TGTD_MALLOC_TUNABLES = _tgtd_malloc_tunables()

# The iSCSI limits rackdiskd gives every target it creates (target/tgtmgr.c,
# target_params); Tgtd.add_lun sets them too, for the same reason.
TARGET_PARAMS = (("MaxRecvDataSegmentLength", "262144"), ("FirstBurstLength", "262144"),
                 ("MaxBurstLength", "1048576"))


# The module install_module() first replaced in this process: (path, bytes, mode), put
# back at exit. None when it replaced nothing (or has not run).
_previous = None
_installed = set()   # paths this process wrote a module to


def _write_atomic(dst, data, mode):
    tmp = f"{dst}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.rename(tmp, dst)


def restore_module():
    """Puts back the module install_module() replaced (at exit; callable earlier)."""
    global _previous
    if _previous is not None:
        dst, data, mode = _previous
        _previous = None
        try:
            _write_atomic(dst, data, mode)
        except OSError as e:
            print(f"tgt_helpers: could not restore {dst}: {e}")


def install_module():
    """Installs build/bs_rackdisk.so where tgtd loads modules (needs root). The first time
    it replaces a module this process did not write, that module is restored at exit."""
    global _previous
    if not os.path.exists(MODULE):
        raise FileNotFoundError(f"{MODULE} missing: run make build")
    os.makedirs(TGT_MODDIR, exist_ok=True)
    dst = os.path.join(TGT_MODDIR, "bs_rackdisk.so")
    with open(MODULE, "rb") as f:
        new = f.read()
    try:
        with open(dst, "rb") as f:
            old = f.read()
        mode = os.stat(dst).st_mode & 0o7777
    except FileNotFoundError:
        old = None
    if old == new:
        return dst
    if old is not None and dst not in _installed and _previous is None:
        _previous = (dst, old, mode)
        atexit.register(restore_module)
    _write_atomic(dst, new, 0o755)
    _installed.add(dst)
    return dst


def short_tmpdir(prefix):
    """Unix socket paths must fit in 108 bytes; pytest's tmp_path may not."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class Tgtd:
    def __init__(self, workdir, iothreads=4):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        # The control port only names the management socket (<ipc>.<port>), and the
        # socket lives in a private directory, so any port below 32768 is free.
        self.control_port = random.randint(1000, 32000)
        self.iothreads = iothreads
        self.ipcdir = short_tmpdir("tgtd")
        self.ipc = os.path.join(self.ipcdir, "ipc")
        self.log = os.path.join(self.dir, "tgtd.log")
        self.proc = None
        self.targets = {}  # tid -> iqn

    def env(self):
        e = dict(os.environ)
        e["TGT_IPC_SOCKET"] = self.ipc
        theirs = e.get("GLIBC_TUNABLES")
        e["GLIBC_TUNABLES"] = TGTD_MALLOC_TUNABLES + (f":{theirs}" if theirs else "")
        return e

    def start(self, timeout=10.0):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control_port), "-t", str(self.iothreads),
             "--iscsi", f"portal=127.0.0.1:{self.port}"],
            stdout=logf, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        logf.close()
        self.targets = {}
        try:
            wait_port(self.port, timeout, self.proc)
            deadline = time.monotonic() + timeout
            while True:
                r = self.adm("--op", "show", "--mode", "sys", check=False)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"tgtd not answering: {r.stderr}\n{self.log_text()}")
                time.sleep(0.05)
        except BaseException:
            self.kill()  # a tgtd that did not start has no LUN to flush
            raise
        return self

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def adm(self, *args, check=True, timeout=30):
        r = subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args],
                           env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args)}: {r.stderr.strip()}\n{self.log_text()}")
        return r

    def add_lun(self, tid, backing, bstype="rackdisk", params=None, check=True, blocksize=None):
        """Creates target tid (iqn ...:tN) with LUN 1 on `backing` (logical blocks of
        `blocksize` bytes; tgt's default, 512, when None); returns the URL."""
        iqn = f"{IQN_PREFIX}:t{tid}"
        self.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        self.targets[tid] = iqn
        for name, value in TARGET_PARAMS:
            self.adm("--op", "update", "--mode", "target", "--tid", str(tid), "--name", name,
                     "--value", value)
        self.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        extra = ("--blocksize", str(blocksize)) if blocksize else ()
        r = self.adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1",
                     "--bstype", bstype, "--backing-store", str(backing), *extra, check=check)
        if r.returncode != 0:
            return None
        if params:
            self.adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid),
                     "--lun", "1", "--params", params)
        return self.url(tid)

    def url(self, tid, lun=1):
        return f"iscsi://127.0.0.1:{self.port}/{self.targets[tid]}/{lun}"

    def remove_targets(self):
        for tid in list(self.targets):
            self.adm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force",
                     check=False)
            del self.targets[tid]

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # tgtd ignores SIGTERM; "delete --mode system" is its clean exit, and it
            # is refused while targets exist, so they go first (closing every LUN).
            try:
                self.remove_targets()
                self.adm("--op", "delete", "--mode", "system", check=False, timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.ipcdir, ignore_errors=True)

    def kill(self):
        """SIGKILL: what a crash of the appliance looks like to the disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def make_disk(raw, disk_dir, store, cache="all", socket_path=None, timeout_ms=30000,
              chunk_size=None, size=None):
    cmd = [MKDISK, "--raw", str(raw), "--disk", str(disk_dir), "--store", str(store),
           "--cache", cache, "--timeout-ms", str(timeout_ms)]
    if socket_path:
        cmd += ["--socket", str(socket_path)]
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    if size:
        cmd += ["--size", str(size)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"mkdisk: {r.stderr}")
    return json.loads(r.stdout)


def make_raw(path, size, seed=1, zero_chunks=(), chunk_size=1 << 20):
    """A raw image of pseudo-random bytes with the listed chunks all zero."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for off in range(0, size, chunk_size):
            n = min(chunk_size, size - off)
            if off // chunk_size in zero_chunks:
                f.write(bytes(n))
            else:
                f.write(rnd.randbytes(n))
    return path


class FetchServer:
    """A stand-in for rackdiskd's fetch socket (see module docstring)."""

    def __init__(self, sock_path, store, raw=None, chunk_size=1 << 20, mode="serve",
                 delay=0.0, fail_errno=5):
        self.path = str(sock_path)
        self.store = str(store)
        self.mode = mode
        self.delay = delay
        self.fail_errno = fail_errno
        self.counts = {"FETCH": 0, "PREFETCH": 0, "TOUCH": 0}
        self.touched = set()
        self.prefetched = []
        self.lock = threading.Lock()
        self.chunks = {}
        if raw:
            with open(raw, "rb") as f:
                while True:
                    data = f.read(chunk_size)
                    if not data:
                        break
                    self.chunks[hashlib.sha256(data).hexdigest()] = data
        self.server = None
        self.thread = None

    def put_chunk(self, h):
        d = os.path.join(self.store, "chunks", h[:2])
        os.makedirs(d, exist_ok=True)
        tmpdir = os.path.join(self.store, "tmp")
        os.makedirs(tmpdir, exist_ok=True)
        tmp = os.path.join(tmpdir, f"{h}.{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(self.chunks[h])
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(d, h))

    def handle_line(self, line):
        parts = line.split()
        if not parts:
            return "ERR 22 empty"
        op = parts[0]
        with self.lock:
            self.counts[op] = self.counts.get(op, 0) + 1
        if op == "TOUCH":
            with self.lock:
                self.touched.update(parts[1:])
            return "OK"
        if op == "PREFETCH":
            with self.lock:
                self.prefetched.append(parts[1])
            if self.mode == "serve" and parts[1] in self.chunks:
                self.put_chunk(parts[1])
            return "OK"
        # FETCH <hash> <len> <timeout_ms> [<image_id> <idx>] (target/fetch_proto.h)
        if op != "FETCH" or len(parts) not in (4, 6):
            return "ERR 22 bad request"
        if self.mode == "stall":
            time.sleep(int(parts[3]) / 1000.0 + 5)
            return None
        if self.mode == "fail":
            return f"ERR {self.fail_errno} {os.strerror(self.fail_errno)}"
        if self.mode == "slow":
            time.sleep(self.delay)
        h = parts[1]
        if h not in self.chunks:
            return "ERR 2 unknown chunk"
        self.put_chunk(h)
        return "OK"

    def start(self):
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    for raw in self.rfile:
                        reply = outer.handle_line(raw.decode(errors="replace").strip())
                        if reply is None:
                            return
                        self.wfile.write((reply + "\n").encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the module closed its side (LUN removed, deadline passed)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = Server(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if os.path.exists(self.path):
            os.unlink(self.path)


def qemu_img(*args, timeout=300, check=True):
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"qemu-img {' '.join(args)}: {r.stderr}")
    return r


def qemu_io(url, *cmds, timeout=120, check=True):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    args.append(url)
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and (r.returncode != 0 or "error" in (r.stdout + r.stderr).lower()):
        raise RuntimeError(f"qemu-io {cmds}: rc={r.returncode} {r.stdout} {r.stderr}")
    return r


def copy_sparse(src, dst):
    shutil.copyfile(src, dst)
