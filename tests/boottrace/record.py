#!/usr/bin/python3
"""Records a boot trace (issue 6): publishes a boot image into a temporary seed repository
served by nginx, starts one appliance (rackdiskd + its tgtd) with `[iscsi] trace_dir`,
creates a disk from the image, boots it with qemu-system-x86_64 (TCG) through QEMU's iSCSI
driver, waits for the guest's RACKDISK-BOOT-DONE marker and its power-off, removes the
disk (which closes the LUN: the module rewrites its trace sorted) and saves the trace.

    /usr/bin/python3 tests/boottrace/record.py [--image build/boot/boot.raw]
        [--out build/boot/boot.trace] [--timeout 300] [--chunk-size 1M] [--keep]

Everything it starts (nginx, rackdiskd, tgtd, QEMU) runs on loopback, in a temporary
directory, and is stopped on the way out, also after a failure. BootRecorder is also
used by tests/integration/test_boottrace.py.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import tracefile  # noqa: E402
from appliance_helpers import RACKDISK, Appliance, install_module, servable  # noqa: E402
from servers import Nginx  # noqa: E402

MARK_DONE = "RACKDISK-BOOT-DONE"
MARK_FAIL = "RACKDISK-BOOT-FAIL"
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
SIZES = {"K": 1 << 10, "M": 1 << 20}


def parse_chunk_size(s):
    return int(s[:-1]) * SIZES[s[-1]] if s[-1] in SIZES else int(s)


class BootError(RuntimeError):
    pass


class BootRecorder:
    """One appliance serving one image, with tracing on. start(), boot(), finish(), stop()."""

    def __init__(self, image, chunk_size="1M", tag="boot", workdir=None):
        self.image = os.path.abspath(image)
        self.chunk_size = chunk_size
        self.tag = tag
        self.dir = workdir or tempfile.mkdtemp(prefix="rdboot", dir="/tmp")
        self.traces = os.path.join(self.dir, "traces")
        self.console = os.path.join(self.dir, "console.log")
        self.nginx = None
        self.app = None
        self.qemu = None
        self.image_id = None

    def start(self):
        repo = os.path.join(self.dir, "repo")
        p = subprocess.run([RACKDISK, "image", "publish", self.image, "--repo", repo,
                            "--name", self.tag, "--chunk-size", self.chunk_size],
                           capture_output=True, text=True, timeout=300)
        if p.returncode:
            raise BootError(f"publish failed: {p.stderr.strip()}")
        with open(os.path.join(repo, "tags", self.tag)) as f:
            self.image_id = f.read().strip()
        servable(repo)
        self.nginx = Nginx(repo, os.path.join(self.dir, "nginx")).start()
        install_module()
        self.app = Appliance(self.nginx.url, extra={
            "iscsi": [f"trace_dir = {self.traces}"],
        })
        self.app.start()
        return self

    def create_disk(self, name):
        p = self.app.cli("disk", "create", name, "--image", self.tag)
        if p.returncode:
            raise BootError(f"disk create {name}: {p.stderr.strip()}\n{self.app.log_text()}")
        return p.stdout.strip().splitlines()[-1]

    def trace_path(self, disk):
        return os.path.join(self.traces, f"{disk}.trace")

    def boot(self, disk="boot", timeout=300.0):
        """Boots disk under TCG; returns seconds from QEMU's start to its exit after the
        guest's power-off. Raises BootError (with the console's tail) otherwise."""
        url = self.create_disk(disk)
        cmd = [QEMU, "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none",
               "-no-reboot", "-serial", f"file:{self.console}",
               "-drive", f"file={url},format=raw,if=virtio"]
        qlog = open(os.path.join(self.dir, "qemu.log"), "wb")
        t0 = time.monotonic()
        self.qemu = subprocess.Popen(cmd, stdout=qlog, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        qlog.close()
        try:
            self.qemu.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_qemu()
            raise BootError(f"no power-off within {timeout:.0f} s\n{self.console_tail()}")
        elapsed = time.monotonic() - t0
        rc, self.qemu = self.qemu.returncode, None
        text = self.console_text()
        if rc != 0 or MARK_DONE not in text or MARK_FAIL in text:
            raise BootError(f"boot failed (qemu exit {rc}):\n{self.console_tail()}\n"
                            f"{self.file_tail(os.path.join(self.dir, 'qemu.log'))}")
        return elapsed

    def finish(self, disk="boot"):
        """Removes the disk: the LUN closes and the module rewrites its trace sorted."""
        p = self.app.cli("disk", "rm", disk, "--force")
        if p.returncode:
            raise BootError(f"disk rm {disk}: {p.stderr.strip()}")
        return self.trace_path(disk)

    def console_text(self):
        try:
            with open(self.console, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def console_tail(self):
        return "console:\n" + self.console_text()[-3000:]

    @staticmethod
    def file_tail(path):
        try:
            with open(path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def kill_qemu(self):
        if self.qemu is not None and self.qemu.poll() is None:
            try:
                os.killpg(self.qemu.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.qemu.wait()
        self.qemu = None

    def stop(self, keep=False):
        self.kill_qemu()
        if self.app is not None:
            self.app.cleanup()
            self.app = None
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=os.path.join(ROOT, "build", "boot", "boot.raw"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "boot", "boot.trace"))
    ap.add_argument("--timeout", type=float, default=300.0, help="boot deadline, seconds")
    ap.add_argument("--chunk-size", default="1M", help="chunk size the image is published "
                    "with (also the unit of the 'unique chunks' figure)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    rec = BootRecorder(args.image, args.chunk_size)
    try:
        rec.start()
        boot_s = rec.boot(timeout=args.timeout)
        path = rec.finish()
        trace = tracefile.load(path)
        if not trace.reads:
            raise BootError("the trace holds no reads")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        shutil.copyfile(path, args.out + ".tmp")
        os.replace(args.out + ".tmp", args.out)
    except BootError as e:
        print(f"record: {e}", file=sys.stderr)
        if args.keep:
            print(f"record: work directory kept: {rec.dir}", file=sys.stderr)
        return 1
    finally:
        rec.stop(keep=args.keep)
    st = tracefile.stats(trace, parse_chunk_size(args.chunk_size))
    print(f"boot: {boot_s:.1f} s under TCG (QEMU start to power-off), image "
          f"{trace.image_id[:16]}.. size {trace.size}")
    print(f"trace: {args.out}: {st['reads']} reads, {st['bytes']} bytes "
          f"({st['unique_bytes']} unique), {st['unique_chunks']} unique "
          f"{args.chunk_size} chunks, reads span {st['span_us'] / 1e6:.1f} s, "
          f"at most {st['max_in_flight']} in flight, {os.path.getsize(args.out)} bytes on disk"
          + (f", {st['dropped']} dropped" if st['dropped'] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
