"""Helpers for the rackdiskd tests (and the demo): a seed repository served by nginx with a
published sample image, and rackdiskd started with a temporary config on free loopback
ports, its own tgtd, state in a short /tmp directory (unix socket paths must fit in 108
bytes). Everything started here is stopped by stop()/cleanup(), SIGKILL if need be.
"""
import json
import os
import random
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from servers import BUILD, Nginx, free_port

RACKDISKD = os.environ.get("RACKDISKD", os.path.join(BUILD, "rackdiskd"))
RACKDISK = os.environ.get("RACKDISK", os.path.join(BUILD, "rackdisk"))
SAMPLE = os.path.join(os.path.dirname(BUILD), "scripts", "make-sample-image.sh")
IQN_PREFIX = "iqn.2026-11.io.rackdisk.test"


def servable(path):
    """nginx workers run unprivileged; open the directories above path for traversal."""
    d = os.path.abspath(str(path))
    while d not in ("/", "/tmp"):
        if os.path.isdir(d):
            os.chmod(d, os.stat(d).st_mode | 0o055)
        d = os.path.dirname(d)
    return str(path)


def make_seed(workdir, tags=(("deb", 8, 1),), chunk_size="64K"):
    """Publishes sample images (tag, size in MiB, seed) into workdir/repo and serves the
    repository with nginx. Returns (nginx, {tag: raw image path})."""
    workdir = str(workdir)
    os.makedirs(workdir, exist_ok=True)
    repo = os.path.join(workdir, "repo")
    raws = {}
    for tag, size_mb, seed in tags:
        raw = os.path.join(workdir, f"{tag}.raw")
        subprocess.run(["bash", SAMPLE, raw, str(size_mb), str(seed)], check=True,
                       capture_output=True, timeout=120)
        p = subprocess.run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", tag,
                            "--chunk-size", chunk_size], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        raws[tag] = raw
    servable(repo)
    nginx = Nginx(repo, os.path.join(workdir, "nginx")).start()
    return nginx, raws


def install_module():
    """The tgt module must be in tgt's module directory for `--bstype rackdisk`."""
    from tgt_helpers import install_module as install
    return install()


class Appliance:
    """rackdiskd with a private tgtd. `extra` adds raw lines to sections, e.g.
    {"iscsi": ["io_timeout_ms = 2000"]}."""

    def __init__(self, seed_url, name="a1", extra=None, iqn_prefix=IQN_PREFIX):
        self.seed_url = seed_url
        self.name = name
        self.iqn_prefix = iqn_prefix
        self.extra = extra or {}
        self.dir = tempfile.mkdtemp(prefix="rdapp", dir="/tmp")
        self.state = os.path.join(self.dir, "state")
        self.conf = os.path.join(self.dir, "rackdisk.conf")
        self.portal_port = free_port()
        self.api_port = free_port()
        self.control_port = random.randint(1000, 32000)
        self.log = os.path.join(self.dir, "rackdiskd.log")
        self.proc = None
        self.write_conf()

    @property
    def api(self):
        return f"http://127.0.0.1:{self.api_port}"

    def write_conf(self):
        sections = {
            "node": [f"name = {self.name}", "rack = r1", f"state_dir = {self.state}",
                     "log_level = debug"],
            "cache": ["size = 1G"],
            "seed": [f"url = {self.seed_url}", "request_timeout_ms = 3000"],
            "iscsi": [f"portal = 127.0.0.1:{self.portal_port}", "tgtd = spawn",
                      f"control_port = {self.control_port}", f"iqn_prefix = {self.iqn_prefix}"],
            "api": [f"listen = 127.0.0.1:{self.api_port}"],
        }
        for sec, lines in self.extra.items():
            sections.setdefault(sec, []).extend(lines)
        with open(self.conf, "w") as f:
            for sec, lines in sections.items():
                f.write(f"[{sec}]\n" + "".join(l + "\n" for l in lines) + "\n")

    def start(self, timeout=20.0):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([RACKDISKD, "--config", self.conf], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rackdiskd exited with {self.proc.returncode}:\n"
                                       f"{self.log_text()}")
                try:
                    st, body = self.request("GET", "/api/v1/health", timeout=1)
                    if st == 200:
                        return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rackdiskd not answering:\n{self.log_text()}")
                time.sleep(0.05)
        except BaseException:
            proc = self.proc
            self.kill()  # rackdiskd (and so its tgtd), if still there
            if proc.returncode is not None and proc.returncode >= 0:
                # it exited by itself: anything left in its group goes, and its exit
                # status stays readable (tests check how a failed start ends)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.proc = proc
            raise

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def request(self, method, path, body=None, raw=None, timeout=60, headers=None):
        """Returns (status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def health(self):
        return self.request("GET", "/api/v1/health")[1]

    def tgtd_pid(self):
        return self.health()["tgtd_pid"]

    def cli(self, *args, timeout=120):
        return subprocess.run([RACKDISK, "--api", self.api, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)

    def tgtadm(self, *args):
        env = dict(os.environ, TGT_IPC_SOCKET=os.path.join(self.state, "tgtd.ipc"))
        return subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi",
                               *args], capture_output=True, text=True, env=env, timeout=30)

    def targets(self):
        """{tid: iqn} as tgtd reports them."""
        r = self.tgtadm("--op", "show", "--mode", "target")
        assert r.returncode == 0, r.stderr
        out = {}
        for line in r.stdout.splitlines():
            if line.startswith("Target "):
                tid, iqn = line[len("Target "):].split(": ", 1)
                out[int(tid)] = iqn
        return out

    def url(self, disk):
        return f"iscsi://127.0.0.1:{self.portal_port}/{self.iqn_prefix}:{disk.lower()}/1"

    def stop(self, timeout=20.0):
        """SIGTERM; returns rackdiskd's exit status (None if it was not running)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL of rackdiskd; its tgtd dies with it (PR_SET_PDEATHSIG)."""
        if self.proc is not None and self.proc.poll() is None:
            pid = self.proc.pid
            self.proc.kill()
            self.proc.wait()
            # Anything else left in the daemon's process group (start_new_session); its
            # tgtd, in a group of its own, dies with it (PR_SET_PDEATHSIG).
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def cleanup(self):
        try:
            self.stop()
        except Exception:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class QemuIo:
    """An interactive qemu-io on an iSCSI URL, whose session stays logged in until close():
    cmd() sends one command, read_lines() reads its output, each read bounded by a
    timeout; close() ends qemu-io (EOF on its stdin) and SIGKILLs it if it has not exited
    within its timeout. A context manager: closed on the way out, failed test or not."""

    def __init__(self, url):
        self.proc = subprocess.Popen(["qemu-io", "-f", "raw", url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cmd(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self, n, timeout=30.0):
        """The next n lines of output; TimeoutError if they have not all come within
        timeout seconds (or qemu-io closed its output first)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while self.buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"qemu-io: {n} line(s) not there after {timeout} s: "
                                   f"{self.buf!r}")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                b = os.read(fd, 65536)
                if not b:
                    raise EOFError(f"qemu-io exited ({self.proc.poll()}): {self.buf!r}")
                self.buf += b
        lines = self.buf.split(b"\n")
        self.buf = b"\n".join(lines[n:])
        return [l.decode(errors="replace") + "\n" for l in lines[:n]]

    def close(self, timeout=30.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        return self.proc.returncode


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def wait_until(cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
