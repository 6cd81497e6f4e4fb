"""Real servers for tests and the demo: nginx and redis-server, each on a free loopback
port in its own directory, stopped by stop() (and killed if it will not stop)."""
import os
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def stop_process(proc, timeout=10.0):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Nginx:
    """nginx serving `root` (a repository) on 127.0.0.1:port, with an access log that
    records every request (used to count seed fetches). extra: raw directives added to
    the server block, e.g. 'limit_rate 100k;'."""

    def __init__(self, root, workdir, port=None, extra=""):
        self.root = os.path.abspath(str(root))
        self.dir = str(workdir)
        self.port = port or free_port()
        self.extra = extra
        self.proc = None
        self.access_log = os.path.join(self.dir, "access.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def write_conf(self):
        os.makedirs(self.dir, exist_ok=True)
        # As root, nginx workers drop to nobody and cannot enter pytest's 0700 temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    sendfile on;
    keepalive_requests 100000;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        autoindex on;
        {self.extra}
    }}
}}
"""
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(conf)

    def start(self):
        """Starts nginx and waits until it listens; if that fails, nginx is stopped
        before the error is raised (a caller registers the server only once start()
        has returned)."""
        self.write_conf()
        stderr = os.path.join(self.dir, "stderr.log")
        with open(stderr, "ab") as errf:
            self.proc = subprocess.Popen(
                ["nginx", "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf")],
                stdout=subprocess.DEVNULL, stderr=errf)
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException as e:
            self.stop()
            if isinstance(e, Exception):
                raise RuntimeError(f"nginx did not start: {e}\n{tail(stderr)}"
                                   f"{tail(os.path.join(self.dir, 'error.log'))}") from e
            raise
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def requests(self, pattern=""):
        """Request lines from the access log containing pattern."""
        if not os.path.exists(self.access_log):
            return []
        with open(self.access_log) as f:
            return [l for l in f if pattern in l]

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read()


class Redis:
    def __init__(self, workdir, port=None, password=None):
        self.dir = str(workdir)
        self.port = port or free_port()
        self.password = password
        self.proc = None

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()  # a failed start leaves no redis-server behind
            raise
        return self

    def stop(self):
        stop_process(self.proc)
        self.proc = None
