#!/usr/bin/env python3
"""Writes or replaces one benchmark script's section of a markdown file.

Usage: md-section.py FILE NAME MODE [FIRST] < BODY

The section is BODY (stdin, without its leading and trailing newlines)
between the markers "<!-- NAME:MODE:begin -->" and "<!-- NAME:MODE:end -->".
It replaces each stretch of FILE from such a begin marker to the next end
marker, markers included. When FILE has none, a "full" section goes right
before the first "<!-- NAME:quick:begin -->" when FILE has one, followed by a
blank line, and any other new section at the end of FILE, after one blank
line. A missing FILE starts as FIRST (default "# Benchmarks" and a newline).
"""
import re
import sys


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: md-section.py FILE NAME MODE [FIRST] < BODY")
    path, name, mode = sys.argv[1:4]
    first = sys.argv[4] if len(sys.argv) == 5 else "# Benchmarks\n"
    body = sys.stdin.read()
    begin, end = "<!-- %s:%s:begin -->" % (name, mode), "<!-- %s:%s:end -->" % (name, mode)
    quick = "<!-- %s:quick:begin -->" % name
    block = "%s\n%s\n%s" % (begin, body.strip("\n"), end)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = first
    pat = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pat.search(text):
        text = pat.sub(lambda m: block, text)
    elif mode == "full" and quick in text:
        text = text.replace(quick, block + "\n\n" + quick, 1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


main()
