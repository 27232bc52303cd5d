#!/usr/bin/env python3
"""Reads xfstests results and compares contenders, for scripts/xfstests.sh.

Usage:
  xfstests-results.py parse RESULT_BASE EXPECTED [EXCLUDED]  > SIDE.tsv
  xfstests-results.py report [--base NAME] NAME=SIDE.tsv[:SECONDS] ...

parse prints one line per test, "test<TAB>status<TAB>detail", status one of
pass, fail, notrun, missing (selected but no result: check was stopped by
the time budget, or died), excluded (listed in EXCLUDED, passed to -E).
Every test in EXPECTED (one name a line, e.g. generic/001) is listed, and
any other test that has a result.

The result of a test comes from, in this order:
  1. RESULT_BASE/result.xml (check -R xunit-quiet), which check rewrites
     before every test, so it holds every finished test even when check was
     killed;
  2. the last "Ran:", "Not run:" and "Failures:" lines of
     RESULT_BASE/check.log (written when check finishes a section);
  3. the per-test files: TEST.notrun (not run), TEST.out.bad (failed).
A test found by none of them is "missing".

report prints a table of counts per contender and, when --base NAME (the
baseline) and one other contender are given, the tests that pass on the
baseline but not on the other one, and the reverse. Exit status 0.
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

STATUSES = ("pass", "fail", "notrun", "missing", "excluded")


def one_line(s, limit=160):
    s = " ".join((s or "").split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    except FileNotFoundError:
        return []


def from_xunit(base):
    """{test: (status, detail)} from result.xml, or None if unreadable."""
    path = os.path.join(base, "result.xml")
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    out = {}
    for tc in root.iter():
        if tc.tag.split("}")[-1] != "testcase":
            continue
        name = tc.get("name")
        if not name:
            continue
        status, detail = "pass", ""
        for child in tc:
            tag = child.tag.split("}")[-1]
            if tag == "skipped":
                status, detail = "notrun", child.get("message", "")
            elif tag in ("failure", "error"):
                status, detail = "fail", child.get("message", "")
        out[name] = (status, one_line(detail))
    return out


def from_check_log(base):
    """{test: (status, '')} from the last summary in check.log, or None."""
    lines = read_lines(os.path.join(base, "check.log"))
    ran = notrun = failed = None
    for l in lines:
        if l.startswith("Ran:"):
            ran, notrun, failed = l[4:].split(), [], []
        elif l.startswith("Not run:") and ran is not None:
            notrun = l[8:].split()
        elif l.startswith("Failures:") and ran is not None:
            failed = l[9:].split()
    if ran is None:
        return None
    out = {t: ("pass", "") for t in ran}
    for t in notrun:
        out[t] = ("notrun", "")
    for t in failed:
        out[t] = ("fail", "")
    return out


def from_files(base, test):
    notrun = os.path.join(base, test + ".notrun")
    if os.path.exists(notrun):
        with open(notrun, errors="replace") as f:
            return "notrun", one_line(f.read())
    if os.path.exists(os.path.join(base, test + ".out.bad")):
        return "fail", "output mismatch (.out.bad)"
    return None


def parse(base, expected_path, excluded_path=None):
    expected = read_lines(expected_path)
    excluded = {l.split()[0] for l in read_lines(excluded_path)} if excluded_path else set()
    xunit = from_xunit(base) or {}
    log = from_check_log(base) or {}
    names = list(expected) + sorted((set(xunit) | set(log)) - set(expected))
    for t in names:
        if t in xunit:
            status, detail = xunit[t]
        elif t in log:
            status, detail = log[t]
        else:
            found = from_files(base, t)
            if found:
                status, detail = found
            elif t in excluded:
                status, detail = "excluded", "listed in the exclude file"
            else:
                status, detail = "missing", "no result (time budget used up, or check died)"
        # check.log gives no reasons; the per-test files do.
        if not detail and status != "pass":
            found = from_files(base, t)
            if found and found[0] == status:
                detail = found[1]
        print("%s\t%s\t%s" % (t, status, detail))


def load_side(spec):
    name, _, rest = spec.partition("=")
    path, _, secs = rest.partition(":")
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                continue
            rows[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
            order.append(parts[0])
    return name, rows, order, secs


def test_key(t):
    m = re.match(r"^(.*?)(\d+)$", t)
    return (m.group(1), int(m.group(2))) if m else (t, 0)


def report(args):
    base = None
    if len(args) >= 2 and args[0] == "--base":
        base, args = args[1], args[2:]
    sides = [load_side(a) for a in args]
    print("%-10s %6s %6s %7s %8s %9s %6s %8s" % ("", *STATUSES, "total", "time"))
    for name, rows, _, secs in sides:
        counts = {s: 0 for s in STATUSES}
        for st, _ in rows.values():
            counts[st if st in counts else "fail"] += 1
        t = ("%ss" % secs) if secs else "-"
        print("%-10s %6d %6d %7d %8d %9d %6d %8s" % (name, *(counts[s] for s in STATUSES), len(rows), t))
    others = [s for s in sides if s[0] != base]
    if base is None or len(sides) != 2 or len(others) != 1:
        return 0
    b = next(s for s in sides if s[0] == base)
    o = others[0]
    names = sorted(set(b[1]) | set(o[1]), key=test_key)

    def listing(title, good, bad):
        hits = [t for t in names
                if good[1].get(t, ("missing", ""))[0] == "pass"
                and bad[1].get(t, ("missing", ""))[0] != "pass"]
        print()
        print("%s (%d):" % (title, len(hits)))
        if not hits:
            print("  (none)")
        for t in hits:
            st, detail = bad[1].get(t, ("missing", ""))
            print("  %-14s %-8s %s" % (t, st, detail))
        return hits

    listing("Pass on %s but not on %s" % (b[0], o[0]), b, o)
    listing("Pass on %s but not on %s" % (o[0], b[0]), o, b)
    return 0


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "parse" and len(sys.argv) <= 5:
        parse(*sys.argv[2:])
        return 0
    if len(sys.argv) >= 3 and sys.argv[1] == "report":
        return report(sys.argv[2:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
