#!/usr/bin/env python3
"""Lists functions longer than a bound (default 60 lines) in C++ sources.

Usage: scripts/long-functions.py [--max N] FILE...
A function is a definition at namespace or class level whose body opens at
the end of its signature line; its length counts the lines from signature to
closing brace. A rough measure (no parser), good enough to keep files honest.
"""
import re
import sys

def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    sig = re.compile(r"^( {0,2})(?!namespace|struct|class|enum|union|extern|typedef|using|if|for|while|switch|return|else|do\b)"
                     r"[A-Za-z_~][^;=]*\)\s*(const)?\s*(noexcept)?\s*(override)?\s*(->\s*[^{]+)?\{\s*$")
    i = 0
    while i < len(lines):
        m = sig.match(lines[i])
        # signature may start on an earlier line: walk back over continuation lines
        if m:
            indent = m.group(1)
            close = indent + "}"
            j = i + 1
            while j < len(lines) and lines[j].rstrip() != close:
                j += 1
            start = i
            while start > 0 and lines[start - 1].strip() and not lines[start - 1].strip().startswith("//") \
                    and not lines[start - 1].rstrip().endswith((";", "{", "}")) and lines[start - 1].startswith(indent) \
                    and not lines[start - 1].startswith(indent + " ") is False:
                start -= 1
            name = re.search(r"([~\w:]+)\s*\(", lines[start] if "(" in lines[start] else lines[i])
            yield (name.group(1) if name else "?"), start + 1, j - start + 1
            i = j + 1
            continue
        i += 1

def main(argv):
    bound = 60
    if len(argv) > 1 and argv[1] == "--max":
        bound = int(argv[2])
        argv = argv[2:]
    worst = 0
    for path in argv[1:]:
        for name, line, length in functions(path):
            worst = max(worst, length)
            if length > bound:
                print(f"{path}:{line}: {name} is {length} lines")
    print(f"longest: {worst} lines", file=sys.stderr)

if __name__ == "__main__":
    main(sys.argv)
