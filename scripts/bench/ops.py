#!/usr/bin/env python3
"""More metadata workloads for scripts/bench.sh (the same for every contender).

Usage:
  ops.py par DIR NPROC NFILES   NPROC processes at once, each creating NFILES
                                files of 4 KiB (open O_EXCL, write, close) in
                                its own directory DIR/pK; timed from a common
                                start to the last one's end
  ops.py tree DIR NFILES NDIRS  NFILES files of 100 bytes spread over NDIRS
                                directories DIR/dNNN (untimed set-up)
  ops.py churn DIR NFILES       git-like churn: NFILES times, write a 4 KiB
                                temporary file and rename it over one of
                                1,000 names; every fourth time also unlink
                                one of them

Contents are distinct and incompressible (seeded PRNG, generated before the
clock starts). Prints "<name> <seconds>" for the timed ones.
"""
import os
import random
import sys
import time

FILE_SIZE = 4096


def create_files(d, n, seed):
    blob = random.Random(seed).randbytes(FILE_SIZE * n)
    os.mkdir(d)
    for i in range(n):
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(blob)[i * FILE_SIZE:(i + 1) * FILE_SIZE]
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def par(root, nproc, nfiles):
    os.makedirs(root, exist_ok=True)
    r, w = os.pipe()
    kids = []
    for k in range(nproc):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # the common start
            try:
                create_files(os.path.join(root, "p%d" % k), nfiles, 1000 + k)
                os._exit(0)
            except BaseException as e:  # noqa: BLE001 - report and fail
                sys.stderr.write("ops.py par: %s\n" % e)
                os._exit(1)
        kids.append(pid)
    os.close(r)
    time.sleep(0.2)  # every child waiting on the pipe
    t = time.perf_counter()
    os.close(w)
    ok = True
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        ok = ok and status == 0
    secs = time.perf_counter() - t
    if not ok:
        raise SystemExit("ops.py par: a process failed")
    print("par_create %.6f" % secs)


def tree(root, nfiles, ndirs):
    rng = random.Random(77)
    dirs = [os.path.join(root, "d%03d" % d) for d in range(ndirs)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    for i in range(nfiles):
        with open(os.path.join(dirs[i % ndirs], "e%06d" % i), "wb") as f:
            f.write(rng.randbytes(100))


def churn(root, n):
    blob = random.Random(5).randbytes(FILE_SIZE * 64)
    os.mkdir(root)
    tmp = os.path.join(root, ".tmp")
    t = time.perf_counter()
    for i in range(n):
        off = (i % 64) * FILE_SIZE
        with open(tmp, "wb") as f:
            f.write(blob[off:off + FILE_SIZE - (i % 97)])
        os.rename(tmp, os.path.join(root, "o%03d" % (i % 1000)))
        if i % 4 == 3:
            try:
                os.unlink(os.path.join(root, "o%03d" % ((i * 7) % 1000)))
            except FileNotFoundError:
                pass
    print("churn %.6f" % (time.perf_counter() - t))


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[2])
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "par":
        par(args[0], int(args[1]), int(args[2]))
    elif cmd == "tree":
        tree(args[0], int(args[1]), int(args[2]))
    elif cmd == "churn":
        churn(args[0], int(args[1]))
    else:
        sys.exit("ops.py: unknown command %r" % cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
