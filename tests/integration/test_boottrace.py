"""Boot trace (issue 6): the boot image (images/mkbootimage.sh) boots under QEMU TCG from a
rackdisk LUN and powers off, and the module's read trace of that boot (lun.json "trace",
target/trace.h) is well-formed, complete and names bytes the LUN serves as the image has
them. Real nginx, rackdiskd, tgtd with bs_rackdisk.so, qemu-system-x86_64, qemu-img."""
import glob
import os
import struct
import subprocess
import sys

import pytest

from servers import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "boottrace"))
import tracefile  # noqa: E402
from record import BootRecorder  # noqa: E402

IMAGE = os.path.join(ROOT, "build", "boot", "boot.raw")
# What images/mkbootimage.sh builds the image from (the prerequisites of its make rule).
IMAGE_SOURCES = [os.path.join(ROOT, "images", "mkbootimage.sh")] + \
    sorted(glob.glob(os.path.join(ROOT, "images", "boot", "*")))


def root_partition_offset(image):
    """Byte offset of MBR partition 2 (the ext4 root, images/mkbootimage.sh)."""
    with open(image, "rb") as f:
        mbr = f.read(512)
    entry = mbr[446 + 16:446 + 32]
    return struct.unpack_from("<I", entry, 8)[0] * 512


@pytest.fixture(scope="module")
def boot_image():
    """The image `make test-integration` makes first (it downloads packages, which a test
    does not do): missing or older than its sources, the test fails at once."""
    make = "run `make build/boot/boot.raw` (a prerequisite of `make test-integration`)"
    if not os.path.exists(IMAGE):
        pytest.fail(f"{IMAGE} is missing: {make}", pytrace=False)
    newer = [s for s in IMAGE_SOURCES if os.path.getmtime(s) > os.path.getmtime(IMAGE)]
    if newer:
        pytest.fail(f"{IMAGE} is older than {', '.join(newer)}: {make}", pytrace=False)
    return IMAGE


@pytest.fixture
def recorder(boot_image):
    rec = BootRecorder(boot_image, chunk_size="64K")
    yield rec
    rec.stop()


def test_boot_trace_is_complete_and_reads_the_image(recorder, tmp_path):
    rec = recorder.start()
    rec.boot(timeout=300)
    console = rec.console_text()
    assert "RACKDISK-BOOT-DONE" in console
    assert "reboot: Power down" in console

    # While the LUN is open the module appends lines in completion order ...
    live = tracefile.load(rec.trace_path("boot"), sort=True)
    # ... and closing it (disk rm) rewrites the file sorted by arrival.
    trace = tracefile.load(rec.finish())
    assert [r.seq for r in trace.reads] == sorted(r.seq for r in trace.reads)
    assert trace.reads == live.reads
    assert trace.dropped == 0
    assert trace.image_id == rec.image_id
    assert trace.size == os.path.getsize(rec.image)
    assert len(trace.reads) > 0
    assert trace.reads[0].start_us == 0
    for r in trace.reads:
        assert r.offset + r.length <= trace.size
    # Reads the boot must have issued are there, where the image holds them: the BIOS
    # reads the MBR first, the kernel reads the root filesystem's superblock.
    assert (trace.reads[0].offset, trace.reads[0].length) == (0, 512)
    sb = root_partition_offset(rec.image) + 1024
    assert any(r.offset <= sb < r.offset + r.length for r in trace.reads)

    # The bytes the trace names, read back through iSCSI from a fresh disk of the same
    # image, are the image's bytes.
    url = rec.create_disk("check")
    out = tmp_path / "check.raw"
    p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    with open(rec.image, "rb") as img, open(out, "rb") as got:
        for start, end in tracefile.unique_ranges(trace.reads):
            img.seek(start)
            got.seek(start)
            assert got.read(end - start) == img.read(end - start), f"bytes {start}..{end}"
