#!/usr/bin/env python3
"""How fairseq's CPU runs of this project's small models fare at each OpenMP thread count: the measurement behind
the one thread the plugin's commands give fairseq's tools by default (kvattn_fairseq/util/proc.py: CPU_THREADS).

    nice python scripts/cpu_threads.py --out docs/bench/threads       # ~12 min on a busy 2-core machine

On the demo's data and its vanilla model (kvattn_fairseq/run/specs/demo.py), each setting of OMP_NUM_THREADS
("default": unset, torch's choice) times a fairseq-train of --updates updates and a fairseq-generate --beam 4 of the
test set from one checkpoint, whole processes, repeated --repeats times in turn; OUT/results.json keeps every run
with the load average before it, OUT/table.md the medians.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvattn_fairseq.data import toy  # noqa: E402
from kvattn_fairseq.run.specs import demo  # noqa: E402
from kvattn_fairseq.util import proc  # noqa: E402
from kvattn_fairseq.util.io import write_atomic  # noqa: E402
from kvattn_fairseq.util.markdown import table  # noqa: E402
from kvattn_fairseq.util.paths import USER_DIR  # noqa: E402


def timed(cmd, threads: str):
    env = proc.tool_env()
    env.pop("OMP_NUM_THREADS", None)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    load = os.getloadavg()[0]
    start = time.time()
    output = proc.run(cmd, env=env, keep_output=False)
    return time.time() - start, load, output


MEASURES = ("train_seconds", "generate_seconds", "generate_fairseq_seconds", "train_load_before")


def summarize(runs, settings, updates: int, repeats: int, machine):
    """results.json's content and table.md's lines from the runs: medians per setting, ratios to the first."""
    median = {t: {k: statistics.median(r[k] for r in runs if r["threads"] == t and r[k] is not None)
                  for k in MEASURES} for t in settings}
    results = {"updates": updates, "repeats": repeats, "model": "the demo's vanilla transformer (2+2 layers of 64)",
               "machine": machine, "runs": runs, "median": median}
    base = median[settings[0]]
    rows = [[t, f"{m['train_seconds']:.1f}", f"{m['train_seconds'] / base['train_seconds']:.2f}×",
             f"{m['generate_seconds']:.1f}", f"{m['generate_fairseq_seconds']:.1f}",
             f"{m['generate_fairseq_seconds'] / base['generate_fairseq_seconds']:.2f}×",
             f"{m['train_load_before']:.1f}"] for t, m in median.items()]
    header = ["OMP_NUM_THREADS", f"fairseq-train, {updates} updates, s", f"vs {settings[0]}",
              "fairseq-generate, s", "of which decoding 500 sentences (beam 4), s", f"vs {settings[0]}",
              "load average before"]
    intro = (f"Whole-process wall time, median of {repeats} run(s) per setting in turn ({results['model']}, the "
             f"demo's data; {machine['cpu_count']} CPUs, shared with other work; niceness {machine['niceness']}; "
             f"`python scripts/cpu_threads.py`). fairseq-generate's time is mostly start-up; the decoding column is "
             f"fairseq's own count.")
    return results, [intro, "", *table(header, rows)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cpu_threads.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--threads", default="1,2,default")
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    settings = a.threads.split(",")
    work = tempfile.mkdtemp(prefix="cpu-threads-")
    try:
        data = toy.prepare_reverse(os.path.join(work, "data"), workers=1, **dict(demo.DATA, train=4000))
        user_dir = ["--user-dir", USER_DIR]  # the plugin's fixes, as the demo runs them (checkpoint loading included)
        train = [*proc.fairseq_tool("fairseq-train"), data, *user_dir, *demo.train_flags("vanilla", 1000, "SAVE"),
                 "--max-update", str(a.updates), "--disable-validation"]
        ckpt = os.path.join(work, "ckpt")
        proc.run([*train[:train.index("SAVE")], ckpt, *train[train.index("SAVE") + 1:]],
                 env=proc.tool_env({"OMP_NUM_THREADS": "1"}), keep_output=False)
        no_save = [*train[:train.index("SAVE")], os.path.join(work, "unused"), *train[train.index("SAVE") + 1:],
                   "--no-save"]
        generate = [*proc.fairseq_tool("fairseq-generate"), data, *user_dir, "--path",
                    os.path.join(ckpt, "checkpoint_last.pt"), "--beam", "4", "--batch-size", "64", "--cpu", "--num-workers", "0",
                    "--max-len-a", "1", "--max-len-b", "5"]  # a reversal is as long as its source
        runs = []
        for rep in range(a.repeats):
            for threads in settings:
                train_s, train_load, _ = timed(no_save, threads)
                gen_s, gen_load, out = timed(generate, threads)
                found = re.search(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s", out)
                runs.append({"threads": threads, "repeat": rep, "train_seconds": round(train_s, 1),
                             "train_load_before": round(train_load, 2), "generate_seconds": round(gen_s, 1),
                             "generate_load_before": round(gen_load, 2),
                             "generate_fairseq_seconds": float(found.group(3)) if found else None})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "torch_default_threads": torch.get_num_threads() if "OMP_NUM_THREADS" not in os.environ else None,
               "niceness": os.nice(0)}
    results, lines = summarize(runs, settings, a.updates, a.repeats, machine)
    os.makedirs(a.out, exist_ok=True)
    write_atomic(os.path.join(a.out, "results.json"), json.dumps(results, indent=2) + "\n")
    write_atomic(os.path.join(a.out, "table.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
