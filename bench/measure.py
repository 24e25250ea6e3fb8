#!/usr/bin/env python3
"""bench/text's and bench/vision's helper for runs on a machine that other jobs may share.

  measure.py run OUT.json -- COMMAND...
      Runs COMMAND (which prints one JSON object), writes that object to OUT.json with "other_cores"
      added: the CPU that everything else on the machine used meanwhile, in cores (busy time in
      /proc/stat over the run, less the command's own user + system time, divided by the wall time).
  measure.py wait-quiet SECONDS
      Returns once other jobs have used under 0.15 cores for 6 s in a row (sampled every 2 s), or after
      SECONDS; prints how long it waited to stderr when it had to.
  measure.py best OUT.json RUN.json...
      The run with the highest steps_per_s (or img_per_s, gflop_per_s) among those where other jobs used under 0.15 cores (among
      all of them when none was that quiet), with "runs" added: every run's steps_per_s and other_cores.
      Exit status 3 when no run was quiet.

Another job matters more than its share of CPU suggests: on 2 cores with 2 OpenMP threads, every parallel
operation waits for the thread the other job preempted.
"""
import json, os, resource, subprocess, sys, time

QUIET = 0.15  # cores


def busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(out, command):
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, start = busy_seconds(), time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall, busy = time.perf_counter() - start, busy_seconds() - busy_before
    if result.returncode != 0:
        sys.exit(f"measure.py: {' '.join(command)} failed (exit {result.returncode})")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (children.ru_utime - before_children.ru_utime) + (children.ru_stime - before_children.ru_stime)
    record = json.loads(result.stdout)
    record["other_cores"] = max(0.0, busy - own) / wall
    with open(out, "w") as f:
        json.dump(record, f)


def wait_quiet(limit):
    start, quiet_since = time.perf_counter(), None
    while True:
        before, t0 = busy_seconds(), time.perf_counter()
        time.sleep(2)
        cores = (busy_seconds() - before) / (time.perf_counter() - t0)
        now = time.perf_counter()
        if cores < QUIET:
            quiet_since = quiet_since or t0
            if now - quiet_since >= 6:
                break
        else:
            quiet_since = None
        if now - start >= limit:
            print(f"measure.py: other jobs still use {cores:.2f} cores after {limit:.0f} s; going on",
                  file=sys.stderr)
            return
    if now - start > 8:
        print(f"measure.py: waited {now - start:.0f} s for other jobs to go quiet", file=sys.stderr)


def best(out, paths):
    runs = [json.load(open(p)) for p in paths]
    quiet = [r for r in runs if r["other_cores"] < QUIET]
    key = next(k for k in ("steps_per_s", "img_per_s", "gflop_per_s") if k in runs[0])
    chosen = dict(max(quiet or runs, key=lambda r: r[key]))
    chosen["runs"] = [{key: round(r[key], 3), "other_cores": round(r["other_cores"], 2)} for r in runs]
    chosen["quiet"] = bool(quiet)
    with open(out, "w") as f:
        json.dump(chosen, f)
    return 0 if quiet else 3


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "run" and sys.argv[3] == "--":
        run(sys.argv[2], sys.argv[4:])
    elif len(sys.argv) == 3 and sys.argv[1] == "wait-quiet":
        wait_quiet(float(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "best":
        sys.exit(best(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
