"""Convert a trained checkpoint, transfer its attention, then finetune: a conversion and two ordinary fairseq runs.

    scripts/convert.sh --checkpoint IN.pt --data DATA_BIN --out DIR [--transfer-updates N] [--finetune-updates N]
                       [--transfer-lr LR] [--finetune-lr LR] [position and kind flags] [-- fairseq-train flags]

1. `python -m kvattn_fairseq convert` writes DIR/converted.pt with the requested kinds (the position and kind flags,
   e.g. --decoder-attention-type memsizer*5,softmax).
2. `fairseq-train --criterion attention_transfer --teacher-checkpoint IN.pt` trains only the new attention modules
   to reproduce the ones they replaced (DIR/transfer/; skipped with --transfer-updates 0).
3. `fairseq-train --finetune-from-model` trains the whole model with the task's usual criterion (DIR/finetune/;
   label-smoothed cross-entropy 0.1 for translation, cross-entropy for language modelling).
Both runs take the model flags of the converted model, the task and its data settings from IN.pt (source/target
language, tokens per sample, sample break mode, max tokens or batch size), Adam (0.9, 0.98) with an inverse-sqrt
schedule warming up over the first tenth of the run, then the flags after `--` (a later flag wins).  Every command
is announced before it runs and recorded in DIR/chain.json with the settings; logs go to DIR/logs/.  The steps run
on the experiment spine (run/spine.py): a rerun with the same settings skips what is done and resumes an
interrupted fairseq-train from its checkpoint_last.pt; a rerun with other settings, or with another IN.pt or
DATA_BIN at the same path (the steps record their size and sha256), is refused in one line before any work, or
with --force redone from the first step they change, removing only what the chain made (a file of yours in a run
directory stops it, named; so does a chain.json of yours in a fresh DIR).  The result is
DIR/finetune/checkpoint_last.pt.
"""
import argparse
import json
import os
import sys
from typing import List, Sequence

from ...checkpoints import config, convert
from ...util.cli import ArgumentParser, run_main, split_passthrough
from ...util.io import write_atomic
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps_convert import Chain, chain_steps, records, result_of

CHAIN = "chain.json"


def task_flags(state) -> List[str]:
    """--task and the data settings the checkpoint was trained with, so that both runs see its data the same way."""
    task, dataset = config.section(state, "task"), config.section(state, "dataset")
    name = config.value(task, "_name") or config.value(task, "task")
    flags = ["--task", name] if name else []
    for section, keys in ((task, ("source_lang", "target_lang", "tokens_per_sample", "sample_break_mode")),
                          (dataset, ("max_tokens", "batch_size"))):
        for key in keys:
            value = config.value(section, key)
            if value is not None:
                flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def steps(a, extra: Sequence[str]) -> List[Step]:
    """The chain's steps, then DIR/chain.json; a bad --checkpoint or plan stops here, before anything is written."""
    teacher, data = os.path.abspath(a.checkpoint), os.path.abspath(a.data)
    state, source_args, target = convert.load_source(teacher)
    values = convert.conversion_values(a)
    chain = Chain(teacher, data, values, convert.converted_flags(source_args, target, values), task_flags(state),
                  {"teacher": os.path.realpath(teacher), "data": os.path.realpath(data)}, a.transfer_lr,
                  a.finetune_lr, list(extra))
    made = chain_steps(chain, work_dir(a.out, "--out"), "", a.transfer_updates, a.finetune_updates)
    settings = {"checkpoint": chain.recorded["teacher"], "data": chain.recorded["data"], "convert": values,
                "transfer_updates": a.transfer_updates, "finetune_updates": a.finetune_updates,
                "transfer_lr": a.transfer_lr, "finetune_lr": a.finetune_lr, "extra": list(extra)}

    def write(ctx: Context) -> None:
        write_atomic(ctx.out, json.dumps({"checkpoint": a.checkpoint, "data": a.data, "result": result_of(made[-1]),
                                          "settings": settings, "commands": records(made, ctx)}, indent=1) + "\n")

    return made + [Step("chain", CHAIN, settings, in_process(write, "chain"), needs=tuple(s.name for s in made),
                        always=True)]


def build_parser() -> ArgumentParser:
    from ...modules.registry import POSITIONS, add_attention_args

    p = ArgumentParser(prog=os.environ.get("KVATTN_CHAIN_PROG", "scripts/convert.sh"), description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter, passthrough=True)
    p.add_argument("--checkpoint", required=True, help="the trained model to convert (and the transfer's teacher)")
    p.add_argument("--data", required=True, help="fairseq-preprocess output for the two training runs")
    p.add_argument("--out", required=True, help="directory for converted.pt, transfer/, finetune/, chain.json and "
                                                "the logs")
    p.add_argument("--transfer-updates", type=int, default=500, help="attention-transfer updates (0: none)")
    p.add_argument("--finetune-updates", type=int, default=2000, help="finetuning updates (0: none)")
    p.add_argument("--transfer-lr", default="1e-3")
    p.add_argument("--finetune-lr", default="5e-4")
    p.add_argument("--force", action="store_true", help="redo the steps whose recorded settings differ from this "
                                                        "command's (only what the chain made is removed)")
    add_attention_args(p, POSITIONS)
    return p


def main(argv=None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    a = p.parse_args(own)
    if a.transfer_updates < 0 or a.finetune_updates < 0:
        p.error("--transfer-updates/--finetune-updates: expected 0 or more")
    if not os.path.isdir(a.data):
        p.error(f"--data: no such directory: {a.data}")

    def body() -> int:
        made = steps(a, extra)
        outputs = Runner("convert-chain", a.out, force=a.force, flag="--out").run(made, title="convert-chain")
        print(os.path.join(os.path.dirname(outputs["chain"]), result_of(made[-2])))
        return 0

    return run_main(p.prog, body)
