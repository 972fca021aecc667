"""WikiText-103 (or any fairseq language-modelling data-bin): fairseq-eval-lm on the valid and test splits.

How the window works (fairseq_cli/eval_lm.py): fairseq subtracts --context-window from --tokens-per-sample, cuts
the split into blocks of (tokens-per-sample - context-window) tokens, and feeds each block with up to
context-window preceding tokens in front of it, scored only on the block.  So the model never sees more than
--tokens-per-sample tokens at once, and:

    --tokens-per-sample M  the model's input window (context + scored block), fairseq's meaning; must be at most
                           the model's max_target_positions and larger than --context-window
    --score-block B        alternatively, the number of tokens scored per window: M = B + context-window is passed
    --context-window C     tokens of context before each block (0: blocks scored without context, which gives a
                           higher perplexity)

Both forms are recorded in the results (tokens_per_sample, context_window, scored_block).  The MGK paper's
sliding-window evaluation (window 256, scoring one new token per window) is --tokens-per-sample 256
--context-window 255 (slow); fairseq's README example is --tokens-per-sample 512 --context-window 400.
"""
import os
from typing import Dict

from ..util.errors import OneLineError
from . import checkpoints, fairseq_tools as tools, inputs, results

NAME = "lm"  # python -m kvattn_fairseq evaluate lm ...
MAIN_METRIC = "test_ppl"
HELP = "language modelling: fairseq-eval-lm perplexity"
# this evaluator's own options and their defaults (its command line's too)
OPTIONS = {"context_window": 0, "tokens_per_sample": None, "score_block": None, "splits": "valid,test"}


def add_arguments(p) -> None:
    p.add_argument("--context-window", type=int, default=OPTIONS["context_window"], metavar="C",
                   help="context tokens before each block")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tokens-per-sample", type=int, metavar="M",
                      help="the model's input window, context included (fairseq's meaning)")
    size.add_argument("--score-block", type=int, metavar="B",
                      help="tokens scored per window; passes --tokens-per-sample B + C")
    p.add_argument("--splits", default=OPTIONS["splits"], help=f"comma-separated splits (default {OPTIONS['splits']})")



def window(a, max_positions) -> Dict:
    if a.context_window < 0:
        raise OneLineError(f"--context-window: must be >= 0, got {a.context_window}")
    if a.score_block is not None:
        if a.score_block < 1:
            raise OneLineError(f"--score-block: must be >= 1, got {a.score_block}")
        total = a.score_block + a.context_window
    else:
        total = a.tokens_per_sample
        if a.context_window >= total:
            raise OneLineError(
                f"--context-window {a.context_window} must be smaller than --tokens-per-sample {total}: fairseq "
                f"scores blocks of tokens-per-sample - context-window tokens (or give --score-block instead)")
    if max_positions and total > max_positions:
        raise OneLineError(
            f"--tokens-per-sample {total} (context {a.context_window} + scored block {total - a.context_window}) "
            f"exceeds the model's max_target_positions {max_positions}")
    return {"tokens_per_sample": total, "context_window": a.context_window,
            "scored_block": total - a.context_window}


def run(a) -> Dict:
    data = inputs.require_dir(a.data, "--data")
    data_bin = os.path.join(data, "data-bin")
    splits = [s for s in a.splits.split(",") if s]
    if not splits:
        raise OneLineError("--splits: give at least one split, e.g. valid,test")
    inputs.require_data_bin(data_bin, "--data", splits)
    tools.check_extra_flags(a.extra, tools.MANAGED_EVAL_LM_FLAGS)
    checkpoint, averaged = checkpoints.resolve_checkpoint(a)
    info, saved_avg = checkpoints.checkpoint_info(checkpoint)
    averaged = averaged or saved_avg
    win = window(a, info.get("max_target_positions"))

    stem = inputs.stem(a.out)
    metrics: Dict = dict(win)
    logs, args = [], []
    for split in splits:
        log = f"{stem}.eval-lm-{split}.log"
        metrics[split], args = tools.eval_lm(data_bin, checkpoint, subset=split,
                                             context_window=win["context_window"],
                                             tokens_per_sample=win["tokens_per_sample"], batch_size=a.batch_size,
                                             max_tokens=a.max_tokens, extra=a.extra, log_path=log)
        logs.append(log)
    main_split = "test" if "test" in splits else splits[-1]
    settings = {"splits": splits, **win, **tools.batch_settings(a, 2), "fairseq_flags": tools.settings_flags(args)}
    result = results.make(NAME, main_metric=MAIN_METRIC, name=inputs.experiment_name(a, checkpoint), model=info,
                          checkpoint=checkpoint,
                          averaged_from=averaged, data=data, settings=settings, metrics=metrics,
                          main_value=metrics[main_split]["ppl"],
                          signature=(f"fairseq-eval-lm perplexity, context window {win['context_window']}, "
                                     f"scored block {win['scored_block']}"),
                          sentences=None, files={"logs": logs}, results_path=a.out, table=a.table)
    result["main"]["metric"] = f"{main_split}_ppl"
    results.save(result, a.out)
    return result


def summary_line(result: Dict) -> str:
    m = result["metrics"]
    parts = [f"{s} ppl {m[s]['ppl']:.2f} (loss {m[s]['loss_base2']:.4f} bits, {m[s]['tokens']:,} tokens)"
             for s in result["settings"]["splits"]]
    return "; ".join(parts) + f"; context window {m['context_window']}, scored block {m['scored_block']}"
