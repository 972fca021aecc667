"""One-line refusals where fairseq's own tools would give silently wrong numbers or a traceback, installed on
import (compat.apply).

fairseq-eval-lm drops every block longer than the model's positions without a word (`ignore_invalid_inputs`):
`--tokens-per-sample 2000` on a 64-position model prints "Evaluated 0 tokens ... Perplexity: 1.00", and 65 scores
only the short last block.  A --context-window as long as --tokens-per-sample leaves no token to score.  Both are
refused before anything is scored, naming the flag.
"""
import functools
import sys

from .util.errors import OneLineError


class EvalLMRefused(OneLineError):
    pass


def check_context_window(tokens_per_sample: int, context_window: int) -> None:
    if context_window > 0 and context_window >= tokens_per_sample:
        raise EvalLMRefused(f"--context-window {context_window} leaves nothing to score: each block scores "
                            f"--tokens-per-sample minus --context-window tokens, so --tokens-per-sample "
                            f"({tokens_per_sample}) must be larger than the context window")


def check_blocks_fit(sizes, max_positions, tokens_per_sample: int, context_window: int, subset: str) -> None:
    """Every block of the evaluated set must fit the model, or it would be skipped unscored."""
    if max_positions is None or sizes is None or not len(sizes):
        return
    limit = max_positions if isinstance(max_positions, int) else min(
        p for p in (max_positions if isinstance(max_positions, (tuple, list)) else [max_positions]) if p)
    longest = int(max(sizes)) + max(context_window, 0)
    if longest > limit:
        too_long = int(sum(1 for s in sizes if int(s) + max(context_window, 0) > limit))
        window = f" plus --context-window {context_window}" if context_window > 0 else ""
        raise EvalLMRefused(f"--tokens-per-sample {tokens_per_sample + max(context_window, 0)}: {too_long} of the "
                            f"{len(sizes)} blocks of {subset}{window} are longer than the model's {limit} positions "
                            f"and would be skipped unscored; use --tokens-per-sample {limit} or less (with "
                            f"--context-window for more context per scored token)")


def install_eval_lm() -> None:
    from fairseq.tasks.language_modeling import LanguageModelingTask

    dataloader = LanguageModelingTask.eval_lm_dataloader
    if getattr(dataloader, "kvattn_checked", False):
        return

    @functools.wraps(dataloader)
    def eval_lm_dataloader(self, dataset, *args, **kwargs):
        names = ("max_tokens", "batch_size", "max_positions", "num_shards", "shard_id", "num_workers",
                 "data_buffer_size", "context_window")
        given = dict(zip(names, args), **kwargs)
        context = given.get("context_window", 0) or 0
        tps = self.args.tokens_per_sample  # fairseq-eval-lm has already taken the context window off
        check_context_window(tps + context, context)
        check_blocks_fit(getattr(dataset, "sizes", None), given.get("max_positions"), tps, context,
                         "the evaluated set")
        return dataloader(self, dataset, *args, **kwargs)

    eval_lm_dataloader.kvattn_checked = True
    LanguageModelingTask.eval_lm_dataloader = eval_lm_dataloader

    tool = sys.modules.get("fairseq_cli.eval_lm")
    if tool is not None and not getattr(tool.main, "kvattn_checked", False):
        main = tool.main

        @functools.wraps(main)
        def checked_main(cfg, **kwargs):
            eval_cfg, task_cfg = getattr(cfg, "eval_lm", None), getattr(cfg, "task", None)
            if eval_cfg is not None and task_cfg is not None and getattr(task_cfg, "tokens_per_sample", None):
                check_context_window(task_cfg.tokens_per_sample, eval_cfg.context_window)
            return main(cfg, **kwargs)

        checked_main.kvattn_checked = True
        tool.main = checked_main


def install() -> None:
    install_eval_lm()
