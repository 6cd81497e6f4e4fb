#!/usr/bin/python3
"""iscsi-test-cu against a rackdisk LUN and against tgt's rdwr store on a raw file of the
same bytes, one suite per run, both LUNs in one private tgtd.

    conformance.py [--full] [--suite NAME]... [--json FILE]

Default: the suites that exercise the backing store (reads, writes, verify, compare and
write, orwrite, write same, unmap, get lba status, prefetch, sync) plus the mandatory
ones; --full runs every SCSI.* suite. Prints, per suite, the passed/total counts on
both stores, then every test that passes on rdwr and fails on rackdisk; exits 1 if
there is one (or if a suite ran no test), 0 otherwise. Each iscsi-test-cu run writes its
CUnit XML in its own directory, and the verdicts are read test by test from there.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from tgt_helpers import Tgtd, install_module, make_disk, make_raw  # noqa: E402

QUICK = ["CompareAndWrite", "GetLBAStatus", "Inquiry", "Mandatory", "OrWrite", "Prefetch10",
         "Prefetch16", "Read6", "Read10", "Read12", "Read16", "ReadCapacity16",
         "ReportSupportedOpcodes", "TestUnitReady", "Unmap", "Verify10", "Verify12", "Verify16",
         "Write10", "Write12", "Write16", "WriteSame10", "WriteSame16", "WriteVerify10",
         "WriteVerify12", "WriteVerify16"]
IMAGE_SIZE = 64 << 20
SUITE_TIMEOUT = 600


def all_suites():
    out = subprocess.run(["iscsi-test-cu", "-l"], capture_output=True, text=True).stdout
    return [m.group(1) for m in re.finditer(r"^SCSI\.([A-Za-z0-9_-]+)$", out, re.M)]


def run_suite(url, suite, workdir):
    """Returns {test: True/False} for one suite, from iscsi-test-cu's XML report."""
    d = os.path.join(workdir, suite)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "output.txt"), "w") as out:
        subprocess.run(["iscsi-test-cu", "-d", "-x", f"--test=SCSI.{suite}", url], cwd=d,
                       stdout=out, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT)
    results = {}
    path = os.path.join(d, "CUnitAutomated-Results.xml")
    if not os.path.exists(path):
        return results
    root = ET.parse(path).getroot()
    for rec in root.iter("CUNIT_RUN_TEST_RECORD"):
        for child in rec:
            name = child.findtext("TEST_NAME", "").strip()
            ok = child.tag == "CUNIT_RUN_TEST_SUCCESS"
            # A test with several failed assertions has several records: any failure
            # fails it.
            results[name] = results.get(name, True) and ok
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="every SCSI.* suite")
    ap.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    ap.add_argument("--json", help="write the per-test verdicts here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    suites = args.suite or (all_suites() if args.full else QUICK)

    install_module()
    work = tempfile.mkdtemp(prefix="rdconf", dir="/tmp")
    tgtd = Tgtd(os.path.join(work, "tgtd"), iothreads=4)
    report = {}
    t0 = time.monotonic()
    try:
        raw = make_raw(os.path.join(work, "image.raw"), IMAGE_SIZE, seed=42, zero_chunks={5, 6})
        make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
        base = os.path.join(work, "rdwr.raw")
        shutil.copyfile(raw, base)
        tgtd.start()
        urls = {
            "rackdisk": tgtd.add_lun(1, os.path.join(work, "disk")),
            # The same thin-provisioning setting on both, so UNMAP and GET LBA STATUS
            # run on both.
            "rdwr": tgtd.add_lun(2, base, bstype="rdwr", params="thin_provisioning=1"),
        }
        for suite in suites:
            report[suite] = {}
            for store, url in urls.items():
                report[suite][store] = run_suite(url, suite, os.path.join(work, store))
    finally:
        tgtd.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}")

    regressions, empty = [], []
    print(f"{'suite':28} {'rackdisk':>10} {'rdwr':>10}")
    totals = {"rackdisk": [0, 0], "rdwr": [0, 0]}
    for suite in suites:
        cells = []
        for store in ("rackdisk", "rdwr"):
            res = report[suite][store]
            passed = sum(res.values())
            totals[store][0] += passed
            totals[store][1] += len(res)
            cells.append(f"{passed}/{len(res)}")
            if not res:
                empty.append(f"{suite} on {store}")
        print(f"{suite:28} {cells[0]:>10} {cells[1]:>10}")
        for test, ok in sorted(report[suite]["rdwr"].items()):
            if ok and not report[suite]["rackdisk"].get(test, False):
                regressions.append(f"SCSI.{suite}.{test}")
    print(f"{'total':28} {'%d/%d' % tuple(totals['rackdisk']):>10} "
          f"{'%d/%d' % tuple(totals['rdwr']):>10}   ({time.monotonic() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    if empty:
        print("suites that ran no test: " + ", ".join(empty))
    if regressions:
        print("pass on rdwr, fail on rackdisk:")
        for r in regressions:
            print("  " + r)
    return 1 if regressions or empty else 0


if __name__ == "__main__":
    sys.exit(main())
