#!/usr/bin/env python3
"""Deterministic small-file tree for scripts/bench.sh.

Usage: mktree.py DEST NFILES NDIRS

Creates NDIRS directories under DEST (NDIRS/10 top-level directories, the
rest spread beneath them) and NFILES files spread round-robin over all of
them. File sizes follow a fixed log-uniform distribution between 64 B and
128 KiB (mean about 17 KiB); contents are incompressible bytes from a seeded
PRNG. The same arguments always give byte-identical trees.
Prints the total number of bytes written.
"""
import math
import os
import random
import sys

MIN_SIZE, MAX_SIZE = 64, 128 * 1024


def main() -> int:
    dest, nfiles, ndirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(20240601)
    ntop = max(1, ndirs // 10)
    dirs = ["d%02d" % t for t in range(ntop)]
    for i in range(ndirs - ntop):
        dirs.append(os.path.join("d%02d" % (i % ntop), "s%03d" % i))
    for d in dirs:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    total = 0
    lo, hi = math.log(MIN_SIZE), math.log(MAX_SIZE)
    for i in range(nfiles):
        size = int(math.exp(rng.uniform(lo, hi)))
        path = os.path.join(dest, dirs[i % ndirs], "file%05d.bin" % i)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
