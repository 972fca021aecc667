"""One-line refusals where fairseq's own tools would give silently wrong numbers or a traceback, installed on
import (compat.apply); each is raised before the tool does its work.

- fairseq-eval-lm drops every block longer than the model's positions without a word (`ignore_invalid_inputs`):
  `--tokens-per-sample 2000` on a 64-position model prints "Evaluated 0 tokens ... Perplexity: 1.00", and 65 scores
  only the short last block.  A --context-window as long as --tokens-per-sample leaves no token to score.
- fairseq-generate --print-alignment reads the cross-attention weights of the alignment layer; the plugin's kinds
  compute none (they never form the target-by-source weight matrix), which ended in an IndexError.
- fairseq-interactive with its standard input closed ended in an AttributeError inside fileinput.
- fairseq-train --fp16 without CUDA ended in torch's "not compiled with CUDA" assertion: fairseq's fp16 optimizer
  keeps fp32 master weights on the GPU.
- A bad value of one of the plugin's flags is one `PROG: error: ...` line, without fairseq's usage block of a few
  hundred lines in front of it (other flags keep argparse's usual usage + error).
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


def alignment_kind(model) -> str:
    """The kind of the cross-attention fairseq's --print-alignment reads (the last decoder layer's), or softmax."""
    plan = getattr(getattr(model, "decoder", None), "plan", None)
    if plan is None or "cross" not in plan.positions or not len(plan["cross"]):
        return "softmax"
    return plan["cross"].kinds[-1]


def install_generate() -> None:
    from fairseq.tasks.fairseq_task import FairseqTask

    build_generator = FairseqTask.build_generator
    if getattr(build_generator, "kvattn_checked", False):
        return

    @functools.wraps(build_generator)
    def checked(self, models, args, *rest, **kwargs):
        if getattr(args, "print_alignment", None):
            for model in models:
                kind = alignment_kind(model)
                if kind != "softmax":
                    raise OneLineError(f"--print-alignment: the model's last cross-attention is {kind}, which computes "
                                       f"no attention weights over the source tokens (only softmax attention does); "
                                       f"drop --print-alignment, or use a model whose last layer has softmax "
                                       f"cross-attention")
        return build_generator(self, models, args, *rest, **kwargs)

    checked.kvattn_checked = True
    FairseqTask.build_generator = checked


def install_interactive() -> None:
    tool = sys.modules.get("fairseq_cli.interactive")
    if tool is None or getattr(tool.main, "kvattn_checked", False):
        return
    main = tool.main

    @functools.wraps(main)
    def checked_main(cfg, *args, **kwargs):
        interactive = getattr(cfg, "interactive", None)
        if interactive is not None and interactive.input == "-" and (sys.stdin is None or sys.stdin.closed):
            raise OneLineError("no standard input to read sentences from (it is closed): pipe the sentences in, "
                               "or pass --input FILE")
        return main(cfg, *args, **kwargs)

    checked_main.kvattn_checked = True
    tool.main = checked_main


def check_fp16_device(cfg) -> None:
    """fairseq-train --fp16 / --memory-efficient-fp16 on a machine or run without CUDA."""
    import torch

    common = getattr(cfg, "common", None)
    if common is None:
        return
    flag = "--fp16" if getattr(common, "fp16", False) else \
        "--memory-efficient-fp16" if getattr(common, "memory_efficient_fp16", False) else None
    if flag and (getattr(common, "cpu", False) or not torch.cuda.is_available()):
        where = "--cpu was given" if getattr(common, "cpu", False) else "no CUDA device is available"
        raise OneLineError(f"{flag}: fairseq's fp16 training needs a CUDA device and {where}; on the CPU, train in "
                           f"fp32 (drop {flag}) or with --bf16")


def install_train() -> None:
    from fairseq.distributed import utils as dist_utils

    call_main = dist_utils.call_main
    if getattr(call_main, "kvattn_fp16_checked", False):
        return

    @functools.wraps(call_main)
    def checked(cfg, main, **kwargs):
        if getattr(main, "__module__", "") == "fairseq_cli.train":
            check_fp16_device(cfg)
        return call_main(cfg, main, **kwargs)

    checked.kvattn_fp16_checked = True
    dist_utils.call_main = checked


def plugin_flags() -> set:
    from .modules.registry import POSITION_FLAGS, all_options

    return {o.flag for o in all_options()} | set(POSITION_FLAGS.values())


def install_usage_free_errors() -> None:
    """argparse prints the whole usage before an error; fairseq's is a few hundred lines, which buries the one line
    that names the plugin flag to fix."""
    import argparse
    import re

    error = argparse.ArgumentParser.error
    if getattr(error, "kvattn_one_line", False):
        return

    @functools.wraps(error)
    def one_line(self, message):
        named = re.match(r"argument ([-\w]+)(/[-\w]+)*:", message)
        if named and named.group(1) in plugin_flags():  # read now: the kinds register after compat.apply
            self.exit(2, f"{self.prog}: error: {message}\n")
        return error(self, message)

    one_line.kvattn_one_line = True
    argparse.ArgumentParser.error = one_line


def install() -> None:
    install_eval_lm()
    install_generate()
    install_interactive()
    install_train()
    install_usage_free_errors()
