"""Every evaluator, by name: each module (wmt.py, cnndm.py, lm.py, synthetic.py, classification.py) declares its
NAME, MAIN_METRIC, HELP, OPTIONS (its own options and their defaults), add_arguments(parser), run(args) -> results
and summary_line(results).  A new evaluator is one module plus its entry in EVALUATORS; the command line, the
results' task names and main metrics, and the experiments' evaluation steps all read them from here."""
import argparse
import json
import os
from typing import Any, Dict

from ..util import proc
from ..util.errors import OneLineError
from . import classification, cnndm, lm, results, synthetic, wmt

EVALUATORS = {m.NAME: m for m in (wmt, cnndm, lm, synthetic, classification)}

# the options every evaluator takes (evaluate/__main__.py's common flags), and their defaults
COMMON = {"data": None, "checkpoint": None, "average_last": None, "average_by": "epoch", "checkpoint_dir": None,
          "average_output": None, "out": None, "name": None, "table": None, "batch_size": None, "max_tokens": None,
          "extra": []}


def options(task: str, **given: Any) -> argparse.Namespace:
    """The arguments of evaluator `task` as its command line would hold them, from keyword values (no command line
    is built and parsed): the experiments' evaluation steps call evaluate() with these."""
    module = EVALUATORS[task]
    known = {**COMMON, **module.OPTIONS}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise KeyError(f"evaluator {task} has no option(s) {unknown}")  # a spec's bug
    return argparse.Namespace(task=task, **{**known, **given})


def evaluate(a: argparse.Namespace) -> Dict[str, Any]:
    """Run the evaluator `a.task`, write its results file and return the results; bad input raises OneLineError
    before any fairseq tool runs."""
    if a.checkpoint and a.average_last:
        raise OneLineError("--checkpoint and --average-last exclude each other")
    if os.path.isdir(a.out):
        raise OneLineError(f"--out {a.out} is a directory; give the results file's name")
    if os.path.exists(a.out) and not _is_results_file(a.out):  # an overwrite replaces only this tool's results
        raise OneLineError(f"--out {a.out} exists and is not a results file of this tool; choose another --out "
                           "(nothing was written)")
    module = EVALUATORS[a.task]
    with proc.staged_logs():  # a failed rerun keeps the previous run's logs beside its results
        result = module.run(a)
    print(f"{result['name']}: {module.summary_line(result)}")
    print(f"wrote {a.out}")
    return result


def _is_results_file(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return results.is_results(json.load(f))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
