"""Everything the plugin changes in fairseq's behaviour (and in what fairseq runs on), applied on import.

PATCHES is the one list of what is changed, in which order, and why: each entry names the function it wraps and
the wrapper layers (innermost first) from the file named for what it fixes; apply.py puts each on exactly once.
No function appears twice, so nothing depends on the order in which modules are imported.  The section "fairseq
fixes applied on import" of docs/reliability.md is docs_section() (`python -m kvattn_fairseq --patches` prints it,
scripts/docs_sections.py pastes it there; a test keeps the two equal); docs/papers/fairseq-pitfalls.md has the
background.

What is changed is fairseq's own functions and what fairseq runs on (torch's allow-list of checkpoint globals,
`numpy.compat`).  The process itself is left alone: a plain `import kvattn_fairseq` (a notebook, a script) leaves
`sys.excepthook`, `argparse` and the import machinery as they were; the one-line error hook goes on only where the
program is fairseq's console tool (one_line_errors.py), and the plugin's own commands report their errors through
util.cli.run_main.
"""
import textwrap
from typing import List

from . import (atomic_checkpoints, attention_plan, bf16, broadcast_state, checkpoint_globals, cpu_distributed,
               last_batch, numpy_compat, one_line_errors, teacher_check, tool_refusals, unsafe_checkpoints)
from .apply import Patch

PATCHES = (
    Patch("torch.serialization.add_safe_globals", "torch >= 2.6 loads checkpoints with `weights_only=True` and "
          "fairseq's hold an `argparse.Namespace`: exactly that global and numpy arrays/scalars of numeric dtype "
          "(`--eval-bleu` counts) are allow-listed; anything else is still refused",
          install=checkpoint_globals.allow, installed=checkpoint_globals.allowed),
    Patch("numpy.compat", "numpy 2 removed `np.compat`, which fairseq's `TokenBlockDataset` (`--sample-break-mode "
          "eos`) still uses: restored (`long = int`)", install=numpy_compat.restore, installed=numpy_compat.present),
    Patch("fairseq.data.data_utils.batch_by_size", "fairseq main drops the last batch when its size is not a "
          "multiple of `--required-batch-size-multiple` (`fairseq-generate` printed 96 hypotheses for 100 "
          "sentences): the dropped batch is put back", (last_batch.keep_last_batch,)),
    Patch("fairseq.checkpoint_utils.load_checkpoint_to_cpu", "a checkpoint that needs any other global is refused "
          "in one line naming the file and the global, nothing in it run (innermost); then a load whose "
          "`--model-overrides` build another attention plan than the checkpoint records, or a `fairseq-train` "
          "resume or finetune that builds another, is refused unless `'load_other_plan': True`",
          (unsafe_checkpoints.refuse_clearly, attention_plan.check_plan_on_load)),
    Patch("fairseq.trainer.Trainer.state_dict", "every checkpoint records its model's attention plan under "
          "`kvattn_plan` (softmax and linear weights have the same shapes: fairseq would load one into the other "
          "without a word)", (attention_plan.record_plan,)),
    Patch("fairseq.trainer.Trainer.load_checkpoint", "the plan of the model `fairseq-train` built is known while "
          "its trainer loads a checkpoint, for the check above", (attention_plan.training_plan,)),
    Patch("fairseq.trainer.Trainer.__init__", "`--criterion attention_transfer` checks `--teacher-checkpoint` "
          "against the model before any weight is loaded or batch read (one line, no `crash.pt`)",
          (teacher_check.check_teacher,)),
    Patch("fairseq.distributed.utils._infer_torch_distributed_launch_init", "torchrun on CPU: fairseq divides by "
          "the number of GPUs to pick a device; every CPU worker gets device 0", (cpu_distributed.infer_launch,)),
    Patch("fairseq.distributed.utils.distributed_init", "without CUDA, fairseq's default NCCL backend becomes gloo",
          (cpu_distributed.gloo_without_cuda,)),
    Patch("fairseq.models.distributed_fairseq_model.DistributedDataParallel", "fairseq passes `device_ids` to "
          "DistributedDataParallel for CPU modules, which it refuses: dropped for them",
          (cpu_distributed.cpu_aware_ddp,)),
    Patch("fairseq.distributed.utils._broadcast_object_slow", "a resume or `--finetune-from-model` with several "
          "workers died on every rank but 0 (`UnpicklingError ... DictConfig`): rank 0 reads the checkpoint through "
          "the checked loader and broadcasts what it read, which the other ranks now unpickle in full",
          (broadcast_state.full_unpickle_on_receivers,)),
    Patch("fairseq.distributed.utils.call_main", "fairseq's argparse path turns `--bf16` into `--tpu` and crashes "
          "looking for torch_xla: without torch_xla, `--bf16` trains in bfloat16 on the CPU or GPU, states in fp32 "
          "(innermost); then each tool's whole config is checked before any work: `fairseq-train --fp16` without CUDA, "
          "`fairseq-eval-lm` with a `--context-window` that leaves nothing to score, `fairseq-interactive` with "
          "stdin closed, `fairseq-train --distributed-world-size 2` without CUDA or torchrun (it names torchrun) are "
          "one line", (bf16.without_tpu, tool_refusals.refuse_before_running)),
    Patch("fairseq.tasks.language_modeling.LanguageModelingTask.eval_lm_dataloader", "`fairseq-eval-lm` skips "
          "blocks longer than the model's positions unscored (\"Evaluated 0 tokens … Perplexity: 1.00\"): refused "
          "in one line", (tool_refusals.eval_lm_dataloader,)),
    Patch("fairseq.tasks.fairseq_task.FairseqTask.build_generator", "`--print-alignment` with a plugin kind in the "
          "last cross-attention (none computes attention weights) ended in an IndexError: refused in one line",
          (tool_refusals.build_generator,)),
    Patch("fairseq.file_io.PathManager.copy", "fairseq copies each saved checkpoint onto `checkpoint_last.pt` / "
          "`checkpoint_best.pt` in place, so a kill during the copy left a truncated file the next run died on: "
          "the copy is atomic", (atomic_checkpoints.atomic_copy,)),
    Patch("fairseq.checkpoint_utils.torch_persistent_save", "every checkpoint write is atomic (a temporary file in "
          "the same directory, fsynced and renamed into place)", (atomic_checkpoints.atomic_save,)),
    Patch("fairseq.checkpoint_utils.load_checkpoint", "a resume gets past an unreadable or missing "
          "`checkpoint_last.pt`: it continues from the readable checkpoint with the most updates, saying so in one "
          "line (see Reliability below)", (atomic_checkpoints.resume_past_damage,)),
    Patch("fairseq.options.parse_args_and_arch", "a bad value of a flag the plugin adds is one line, without "
          "fairseq's usage block of a few hundred lines in front of it (other flags keep argparse's usage + error); "
          "only the parser fairseq parses with, during that call: `argparse` itself is not changed",
          (one_line_errors.usage_free,)),
    Patch("sys.excepthook", "only where the program is one of fairseq's console tools (`fairseq-train`, "
          "`python -m fairseq_cli.generate`, ...: fairseq's CLI loaded the plugin as its `--user-dir`), never on a "
          "plain import: a refusal raised inside the tool (the plugin's errors, an input longer than the model "
          "admits, weights that do not fit the model, an allocation too large for the machine) is printed as one "
          "line naming the fix instead of a traceback (`--memsizer-self-slots 1000000000`: out of memory, with the "
          "flags that size the model and the batch); every other exception keeps its traceback, and "
          "`KVATTN_TRACEBACK=1` prints the traceback in front of the one line",
          install=one_line_errors.install_hook, installed=one_line_errors.hook_as_due),
)


# the generated list lies between these two lines of DOCS_PAGE
DOCS_PAGE = "docs/reliability.md"
DOCS_BEGIN = "<!-- generated from kvattn_fairseq/patches/__init__.py (PATCHES): edit the list there -->\n"
DOCS_END = "<!-- end of the generated list -->\n"


def apply() -> None:
    """Apply every patch in PATCHES, in order; a second call changes nothing."""
    for patch in PATCHES:
        patch.apply()


def docs_section(width: int = 118) -> str:
    """DOCS_PAGE's numbered list of the fixes, rendered from PATCHES."""
    lines: List[str] = []
    for i, patch in enumerate(PATCHES, 1):
        head = f"{i}. "
        lines += textwrap.wrap(f"{head}`{patch.target}`: {patch.why}.", width, subsequent_indent=" " * len(head),
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines) + "\n"
