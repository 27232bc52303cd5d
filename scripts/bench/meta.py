#!/usr/bin/env python3
"""Metadata workload for scripts/bench.sh (the same script for every contender).

Usage: meta.py DIR NFILES NDIRS [PHASE...]

Phases, each timed separately (wall clock, seconds); by default all four
in order, else those named (in the order given; each one expects what the
phases before it left, so a caller can settle between invocations):
  create  mkdir NDIRS directories, then create NFILES files of 4 KiB each
          (open O_CREAT|O_EXCL, one write, close), spread round-robin
  stat    os.stat() every file
  rename  rename every file to a new name in the same directory
  delete  unlink every file, then rmdir every directory

Every file gets distinct, incompressible content (seeded PRNG, generated
before the clock starts) so that content-addressed stores cannot deduplicate.
Prints one line per phase: "<phase> <seconds>".
"""
import os
import random
import sys
import time

FILE_SIZE = 4096


def main() -> int:
    root, nfiles, ndirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(0x10CCE7)
    blob = rng.randbytes(FILE_SIZE * nfiles) if "create" in (sys.argv[4:] or ["create"]) else b""
    dirs = [os.path.join(root, "m%03d" % d) for d in range(ndirs)]
    names = [os.path.join(dirs[i % ndirs], "f%05d.dat" % i) for i in range(nfiles)]
    renamed = [n[:-4] + ".renamed" for n in names]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    out = []
    phases = sys.argv[4:] or ["create", "stat", "rename", "delete"]

    for phase in phases:
        t = time.perf_counter()
        if phase == "create":
            for d in dirs:
                os.mkdir(d)
            for i, n in enumerate(names):
                fd = os.open(n, flags, 0o644)
                try:
                    off = i * FILE_SIZE
                    view = memoryview(blob)[off:off + FILE_SIZE]
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
        elif phase == "stat":
            for n in names:
                st = os.stat(n)
                if st.st_size != FILE_SIZE:
                    raise SystemExit("meta.py: %s has size %d, expected %d" % (n, st.st_size, FILE_SIZE))
        elif phase == "rename":
            for a, b in zip(names, renamed):
                os.rename(a, b)
        elif phase == "delete":
            for n in renamed:
                os.unlink(n)
            for d in dirs:
                os.rmdir(d)
        else:
            raise SystemExit("meta.py: unknown phase %r" % phase)
        out.append((phase, time.perf_counter() - t))

    for phase, secs in out:
        print("%s %.6f" % (phase, secs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
