#!/usr/bin/env python3
"""Reads a callgrind file of bench/profile.sh and shows where a request's instructions go.

  bench/callgrind.py FILE self [--top 40]
      functions by their own (exclusive) instructions per request;
  bench/callgrind.py FILE callers FUNCTION
      who calls FUNCTION, with the instructions per request spent in those calls;
  bench/callgrind.py FILE tree FUNCTION [--depth 4] [--min 150]
      what FUNCTION calls, as a tree of instructions per request (a callee's own callees are
      its calls from everywhere, not only from this caller: callgrind keeps no call paths).

FUNCTION is a function's full name as `self` prints it. --requests (default 10000) is the
number of requests profiled, the divisor of every figure.
"""

import argparse
import collections
import re


def load(path):
    """Own cost per function, and the inclusive cost of calls per (caller, callee)."""
    names = {}

    def name(kind, text):
        found = re.match(r"\((\d+)\)(?:\s+(.*))?", text)
        if not found:
            return text
        key = (kind, found.group(1))
        if found.group(2):
            names[key] = found.group(2)
        return names.get(key, text)

    own = collections.Counter()
    calls = collections.defaultdict(collections.Counter)
    function = callee = None
    in_call = False
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                function = name("fn", line[3:])
            elif line.startswith("cfn="):
                callee = name("fn", line[4:])
            elif line.startswith(("fl=", "fi=", "fe=")):
                name("fl", line[3:])
            elif line.startswith("calls="):
                in_call = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                fields = line.split()
                if len(fields) < 2:
                    continue
                if in_call:
                    calls[function][callee] += int(fields[1])
                    in_call = False
                else:
                    own[function] += int(fields[1])
    return own, calls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("mode", choices=["self", "callers", "tree"])
    parser.add_argument("function", nargs="?")
    parser.add_argument("--requests", type=float, default=10000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--min", type=float, default=150, help="smallest cost shown in a tree, per request")
    args = parser.parse_args()
    own, calls = load(args.file)
    per = args.requests
    if args.mode == "self":
        for function, cost in own.most_common(args.top):
            print(f"{cost / per:8.0f}  {function}")
        return
    if not args.function:
        parser.error(f"{args.mode} needs a FUNCTION")
    if args.mode == "callers":
        callers = collections.Counter({f: c[args.function] for f, c in calls.items() if args.function in c})
        for function, cost in callers.most_common(args.top):
            print(f"{cost / per:8.0f}  {function}")
        return

    def walk(function, depth, seen):
        for callee, cost in calls[function].most_common():
            if cost / per < args.min:
                break
            print(f"{'  ' * depth}{cost / per:7.0f}  {callee}")
            if depth + 1 < args.depth and callee not in seen:
                walk(callee, depth + 1, seen | {callee})

    print(f"own: {own[args.function] / per:.0f}")
    walk(args.function, 0, {args.function})


if __name__ == "__main__":
    main()
