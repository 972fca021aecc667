"""The conversion steps (run/spine.py runs them): a trained checkpoint converted to other attention kinds, in this
process (checkpoints/convert.py), then the fairseq-train runs that start from it: attention transfer
(`--criterion attention_transfer --teacher-checkpoint`, only the new attention trained) and finetuning.
`convert-chain` (run/specs/convert_chain.py) and the recovery experiment (run/specs/recovery.py) are built from
chain_steps."""
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..checkpoints import convert
from ..util import proc
from .spine import Context, Step, in_process
from .steps import train_step
from .train import Command


@dataclass(frozen=True)
class Chain:
    """What a conversion chain starts from.  Paths are absolute; `recorded` is how the teacher and the data are
    named in the steps' settings (a file of the user's: its real path; a step's output: its path in the work
    directory)."""
    teacher: str                    # the trained checkpoint: converted, and the transfer's teacher
    data_bin: str                   # fairseq-preprocess output for the training runs
    values: Mapping[str, Any]       # the conversion's position and kind options, by destination
    model_flags: Sequence[str]      # fairseq-train flags of the converted model (convert.converted_flags)
    data_flags: Sequence[str]       # --task and the teacher's data settings
    recorded: Mapping[str, str]     # {"teacher": ..., "data": ...}
    transfer_lr: str = "1e-3"
    finetune_lr: str = "5e-4"
    extra: Sequence[str] = ()       # fairseq-train flags after the chain's own (a later flag wins)
    teacher_step: Optional[str] = None  # the steps that make the teacher and the data, when the experiment does
    data_step: Optional[str] = None
    seed: int = 1                   # of the conversion's new parameters

    def sources(self, *which: str) -> Dict[str, str]:
        """The inputs among "teacher" and "data" that no step of the experiment makes, by the flag that names them
        (`convert-chain --checkpoint/--data`): the steps record their content, not only their paths."""
        made = {"teacher": self.teacher_step, "data": self.data_step}
        paths = {"teacher": ("--checkpoint", self.teacher), "data": ("--data", self.data_bin)}
        return dict(paths[w] for w in which if made[w] is None)

    @property
    def task(self) -> Optional[str]:
        flags = list(self.data_flags)
        return flags[flags.index("--task") + 1] if "--task" in flags else None


def criterion_flags(task: Optional[str]) -> List[str]:
    """The task's usual criterion: cross-entropy for language modelling, label-smoothed (0.1) for translation."""
    if task == "language_modeling":
        return ["--criterion", "cross_entropy"]
    return ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


def schedule(updates: int, lr: str) -> List[str]:
    """Adam (0.9, 0.98), inverse-sqrt decay after warming up over the first tenth of the run."""
    return ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", str(max(1, updates // 10)), "--max-update", str(updates)]


def convert_step(name: str, out: str, chain: Chain, seed: int = 1) -> Step:
    """chain.teacher converted with chain.values into the file OUT (checkpoints/convert.py's convert_file)."""
    values = dict(chain.values)

    def run(ctx: Context) -> None:
        os.makedirs(os.path.dirname(ctx.out), exist_ok=True)
        done = convert.convert_file(chain.teacher, ctx.out, values, seed=seed, force=True)
        print("\n".join(convert.report_lines(done, chain.teacher, ctx.out)))

    by_hand = ["python", "-m", "kvattn_fairseq", "convert", "--checkpoint", chain.teacher, "--out", out,
               *convert.conversion_flags(values), "--seed", str(seed)]
    return Step(name, out, {"checkpoint": chain.recorded["teacher"], **values, "seed": seed},
                in_process(run, name), needs=tuple(n for n in (chain.teacher_step,) if n),
                command=proc.shell(by_hand), sources=chain.sources("teacher"))


def stage_step(stage: str, name: str, out: str, work: str, chain: Chain, init: Step, updates: int,
               init_file: Optional[str] = None) -> Step:
    """fairseq-train into OUT from the checkpoint `init` made (its output, or `init_file` in it): stage
    "transfer" trains the new attention to reproduce the teacher's, "finetune" the whole model.  fairseq-train
    builds the model from chain.model_flags and loads the checkpoint into it strictly (the plugin refuses another
    attention plan), so a model that does not fit stops the run at its start."""
    start = os.path.join(work, init.out, init_file) if init_file else os.path.join(work, init.out)
    if stage == "transfer":
        how, lr, recorded = ["--criterion", "attention_transfer", "--teacher-checkpoint", chain.teacher], \
            chain.transfer_lr, {"teacher": chain.recorded["teacher"]}
    else:
        how, lr, recorded = criterion_flags(chain.task), chain.finetune_lr, {"criterion": criterion_flags(chain.task)}
    args = [chain.data_bin, "--user-dir", _user_dir(), *chain.model_flags, *chain.data_flags, "--no-epoch-checkpoints",
            "--log-format", "simple", "--finetune-from-model", start, "--save-dir", os.path.join(work, out), *how,
            *schedule(updates, lr), *chain.extra]
    settings = {"stage": stage, "model": list(chain.model_flags), "data": chain.recorded["data"],
                "data_flags": list(chain.data_flags), **recorded, "updates": updates, "lr": str(lr),
                "extra": list(chain.extra)}
    needs = (init.name, *(n for n in (chain.data_step, chain.teacher_step if stage == "transfer" else None) if n))
    return train_step(name, out, Command([*proc.fairseq_tool("fairseq-train"), *args], [], args), settings,
                      needs=needs, sources=chain.sources(*(("teacher", "data") if stage == "transfer" else ("data",))))


def chain_steps(chain: Chain, work: str, where: str, transfer_updates: int, finetune_updates: int,
                converted: Optional[Step] = None) -> List[Step]:
    """WHERE/converted.pt (unless `converted`, an earlier conversion of the same teacher with the same values, is
    given), then WHERE/transfer/ (transfer_updates > 0), then WHERE/finetune/ (finetune_updates > 0); the last
    step's name is the chain's result."""
    out: List[Step] = []
    if converted is None:
        converted = convert_step(os.path.join(where, "convert"), os.path.join(where, "converted.pt"), chain,
                                 chain.seed)
        out.append(converted)
    last, last_file = converted, None
    for stage, updates in (("transfer", transfer_updates), ("finetune", finetune_updates)):
        if updates > 0:
            last = stage_step(stage, os.path.join(where, stage), os.path.join(where, stage), work, chain, last,
                              updates, last_file)
            last_file = "checkpoint_last.pt"
            out.append(last)
    return out


def result_of(step: Step) -> str:
    """The checkpoint a chain step leaves (relative to the work directory)."""
    return step.out if step.out.endswith(".pt") else os.path.join(step.out, "checkpoint_last.pt")


def records(steps: Sequence[Step], ctx: Context) -> List[Dict[str, Any]]:
    """Each step's command, log and times, from the records of the step running now (which needs them all)."""
    from .spine import log_path

    return [{"step": s.name, "cmd": s.command, "log": os.path.relpath(log_path(ctx.work, s.out), ctx.work),
             "started": (ctx.records.get(s.name) or {}).get("started"),
             "finished": (ctx.records.get(s.name) or {}).get("finished")} for s in steps]


def _user_dir() -> str:
    from ..util.paths import USER_DIR

    return USER_DIR
