#!/usr/bin/env python3
"""Small-file tree of random content for scripts/bench-sync.sh.

Usage: randtree.py DEST NFILES NDIRS

Creates NDIRS directories under DEST (NDIRS/10 top-level directories, the
rest spread beneath them) and NFILES files spread round-robin over all of
them, each of a size drawn uniformly between 1 KiB and 16 KiB. The layout
and sizes come from a seeded PRNG, so the same arguments always give the
same names and sizes; the contents are fresh random bytes on every call.
Prints the total number of bytes written.
"""
import os
import random
import sys

MIN_SIZE, MAX_SIZE = 1024, 16 * 1024


def main() -> int:
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[2])
    dest, nfiles, ndirs = sys.argv[1], int(sys.argv[2]), max(1, int(sys.argv[3]))
    rng = random.Random(20241127)
    ntop = max(1, ndirs // 10)
    dirs = ["d%02d" % t for t in range(ntop)]
    for i in range(ndirs - ntop):
        dirs.append(os.path.join("d%02d" % (i % ntop), "s%03d" % i))
    for d in dirs:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    total = 0
    for i in range(nfiles):
        size = rng.randint(MIN_SIZE, MAX_SIZE)
        path = os.path.join(dest, dirs[i % len(dirs)], "file%05d.bin" % i)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        total += size
    print(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
