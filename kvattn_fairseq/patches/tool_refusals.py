"""One-line refusals where fairseq's own tools would give silently wrong numbers or a traceback (wrapper factories
for patches.PATCHES); each is raised before the tool does its work.

- fairseq-eval-lm drops every block longer than the model's positions without a word (`ignore_invalid_inputs`):
  `--tokens-per-sample 2000` on a 64-position model prints "Evaluated 0 tokens ... Perplexity: 1.00", and 65 scores
  only the short last block.  A --context-window as long as --tokens-per-sample leaves no token to score.
- fairseq-generate --print-alignment reads the cross-attention weights of the alignment layer; the plugin's kinds
  compute none (they never form the target-by-source weight matrix), which ended in an IndexError.
- fairseq-interactive with its standard input closed ended in an AttributeError inside fileinput.
- fairseq-train --fp16 without CUDA ended in torch's "not compiled with CUDA" assertion: fairseq's fp16 optimizer
  keeps fp32 master weights on the GPU.
- fairseq-train --distributed-world-size N > 1 without CUDA and without a launcher ended in fairseq's assertion
  "world size is N but have 0 available devices": fairseq spawns one worker per GPU itself; CPU workers are started
  by torchrun.
"""
import sys

from ..util.errors import OneLineError


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


def eval_lm_dataloader(dataloader):
    """fairseq.tasks.language_modeling.LanguageModelingTask.eval_lm_dataloader"""
    def checked(self, dataset, *args, **kwargs):
        names = ("max_tokens", "batch_size", "max_positions", "num_shards", "shard_id", "num_workers",
                 "data_buffer_size", "context_window")
        given = dict(zip(names, args), **kwargs)
        context = given.get("context_window", 0) or 0
        tps = self.args.tokens_per_sample  # fairseq-eval-lm has already taken the context window off
        check_context_window(tps + context, context)
        check_blocks_fit(getattr(dataset, "sizes", None), given.get("max_positions"), tps, context,
                         "the evaluated set")
        return dataloader(self, dataset, *args, **kwargs)

    return checked


def alignment_kind(model) -> str:
    """The kind of the cross-attention fairseq's --print-alignment reads (the last decoder layer's), or softmax."""
    plan = getattr(getattr(model, "decoder", None), "plan", None)
    if plan is None or "cross" not in plan.positions or not len(plan["cross"]):
        return "softmax"
    return plan["cross"].kinds[-1]


def build_generator(build):
    """fairseq.tasks.fairseq_task.FairseqTask.build_generator"""
    def checked(self, models, args, *rest, **kwargs):
        if getattr(args, "print_alignment", None):
            for model in models:
                kind = alignment_kind(model)
                if kind != "softmax":
                    raise OneLineError(f"--print-alignment: the model's last cross-attention is {kind}, which computes "
                                       f"no attention weights over the source tokens (only softmax attention does); "
                                       f"drop --print-alignment, or use a model whose last layer has softmax "
                                       f"cross-attention")
        return build(self, models, args, *rest, **kwargs)

    return checked


def check_stdin(cfg) -> None:
    """fairseq-interactive reading sentences from a closed standard input."""
    interactive = getattr(cfg, "interactive", None)
    if interactive is not None and interactive.input == "-" and (sys.stdin is None or sys.stdin.closed):
        raise OneLineError("no standard input to read sentences from (it is closed): pipe the sentences in, "
                           "or pass --input FILE")


def check_eval_lm_window(cfg) -> None:
    eval_cfg, task_cfg = getattr(cfg, "eval_lm", None), getattr(cfg, "task", None)
    if eval_cfg is not None and task_cfg is not None and getattr(task_cfg, "tokens_per_sample", None):
        check_context_window(task_cfg.tokens_per_sample, eval_cfg.context_window)


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


def check_cpu_workers(cfg) -> None:
    """fairseq-train --distributed-world-size N > 1 with no GPU to spawn workers on and no launcher that started them."""
    import os

    import torch

    dt = getattr(cfg, "distributed_training", None)
    world = getattr(dt, "distributed_world_size", 1) or 1
    if world <= 1 or torch.cuda.is_available() or getattr(dt, "distributed_init_method", None):
        return
    launched = all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"))
    if launched or (getattr(dt, "distributed_port", -1) or -1) > 0:  # torchrun, or SLURM's variables with a port
        return
    raise OneLineError(f"--distributed-world-size {world}: no CUDA device to start one worker per GPU on; start CPU "
                       f"workers with torchrun: torchrun --nproc_per_node {world} -m fairseq_cli.train ... --cpu "
                       f"--distributed-world-size {world} --distributed-backend gloo")


def check_train(cfg) -> None:
    check_fp16_device(cfg)
    check_cpu_workers(cfg)


# the tool whose main fairseq's call_main runs -> its check of the whole config, before any work
CHECKS = {"fairseq_cli.train": check_train, "fairseq_cli.eval_lm": check_eval_lm_window,
          "fairseq_cli.interactive": check_stdin}


def tool_of(main) -> str:
    """The fairseq_cli module of `main`, also when it runs as `python -m fairseq_cli.X` (then named __main__)."""
    module = sys.modules.get(getattr(main, "__module__", None) or "")
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else getattr(main, "__module__", "")


def refuse_before_running(call_main):
    """A layer of fairseq.distributed.utils.call_main, the entry every fairseq tool goes through."""
    def checked(cfg, main, **kwargs):
        check = CHECKS.get(tool_of(main))
        if check is not None:
            check(cfg)
        return call_main(cfg, main, **kwargs)

    return checked
