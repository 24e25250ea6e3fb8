#!/usr/bin/env python3
"""Side-by-side operator self time of two Chrome traces, per training step: the ones
`graft_text_bench train-* --profile G.json` and `reference_text.py train-* --profile P.json` write.

  bench/trace_top.py G.json P.json STEPS [ROWS]

Self time = an event's duration less its direct children's (events nest by time on each thread), so a
wrapper (aten::linear, autograd::engine::evaluate_function) shows only its own overhead.
"""
import collections, json, sys


def self_times(path):
    events = json.load(open(path))
    if isinstance(events, dict):
        events = events["traceEvents"]
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[e["tid"]].append(e)
    own, calls = collections.Counter(), collections.Counter()
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack = []  # (start, duration, name) of the open ancestors
        for e in thread_events:
            start, duration = float(e["ts"]), float(e["dur"])
            while stack and start >= stack[-1][0] + stack[-1][1] - 1e-6:
                stack.pop()
            if stack:
                own[stack[-1][2]] -= duration
            own[e["name"]] += duration
            calls[e["name"]] += 1
            stack.append((start, duration, e["name"]))
    return own, calls


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    steps = float(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    g, gc = self_times(sys.argv[1])
    p, pc = self_times(sys.argv[2])
    names = sorted(set(g) | set(p), key=lambda n: -(g.get(n, 0) + p.get(n, 0)))
    print(f"| op | graft ms/step | graft calls/step | python ms/step | python calls/step |")
    print("|---|---|---|---|---|")
    for n in names[:rows] + ["TOTAL"]:
        gt, pt = (sum(g.values()), sum(p.values())) if n == "TOTAL" else (g.get(n, 0), p.get(n, 0))
        gn, pn = (sum(gc.values()), sum(pc.values())) if n == "TOTAL" else (gc.get(n, 0), pc.get(n, 0))
        print(f"| {n} | {gt / 1e3 / steps:.1f} | {gn / steps:.0f} | {pt / 1e3 / steps:.1f} | {pn / steps:.0f} |")


if __name__ == "__main__":
    main()
