"""`--criterion attention_transfer`: train each new attention of a converted model to reproduce, on the same layer
input, the output of the attention it replaced (the "attention transfer" stage of Zhang et al., 2024, LoLCATs,
arXiv 2410.10254, §3.1), before an ordinary finetune.

    fairseq-train DATA --user-dir "$USER_DIR" --finetune-from-model converted.pt <its --model-flags> \\
        --criterion attention_transfer --teacher-checkpoint original.pt ...

The teachers are the attention modules of --teacher-checkpoint (the checkpoint that was converted), kept frozen by
this criterion beside the model, never inside it: the model's state dict, its checkpoints and a later finetune or
fairseq-generate see an ordinary model.  At every site whose module differs in kind from the teacher's, a forward
hook runs the teacher on exactly the inputs the new module received (query, key, value, padding and causal
masks), records the mean squared error between the two outputs over real (non-pad) positions, and passes the
teacher's output on, so every layer trains on the hidden states of the original model.  The loss is the sum of
the per-site errors, each also logged (`mse_dec0`, `mse_cross1`, `mse_enc0`, ...).  Every other parameter of the
model is frozen on the first step (their gradients stay None, so fairseq's optimizers leave them untouched); this
stage runs in one process (frozen parameters changed after DistributedDataParallel has wrapped the model are not
supported by it).
"""
import logging
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..modules.registry import AttentionConfigError

logger = logging.getLogger(__name__)
SHORT = {"encoder": "enc", "decoder": "dec", "cross": "cross"}


@dataclass
class AttentionTransferConfig(FairseqDataclass):
    teacher_checkpoint: str = field(default="", metadata={
        "help": "the checkpoint the model was converted from: its attention modules are the teachers"})


@register_criterion("attention_transfer", dataclass=AttentionTransferConfig)
class AttentionTransferCriterion(FairseqCriterion):
    def __init__(self, task, teacher_checkpoint: str):
        super().__init__(task)
        from ..checkpoints.convert import attention_sites, load_source, source_model

        if not teacher_checkpoint:
            raise AttentionConfigError("--teacher-checkpoint: required by --criterion attention_transfer (the "
                                       "checkpoint the model was converted from)")
        state, args, _ = load_source(teacher_checkpoint, "--teacher-checkpoint")  # a bad one: ConversionError
        teacher = source_model(state, args, teacher_checkpoint, "--teacher-checkpoint")
        # plain attributes, not submodules: the teachers stay out of the optimizer, the trainer's criterion state
        # and every checkpoint
        self.teachers = {(p, i): m.requires_grad_(False) for p, i, _, m in attention_sites(teacher)}
        self.teacher_weights = teacher.state_dict()  # to check the frozen weights; dropped once checked
        self.teacher_path = teacher_checkpoint
        self.sites: List[Tuple[str, int]] = []
        self.captured: Dict[Tuple[str, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        self.hooked = lambda: None  # a weak reference to the model: a submodule would be saved with the criterion

    # --- checked when fairseq-train builds its Trainer, set up on the first batch ------------------------------------
    def check_student(self, model: nn.Module) -> List[Tuple[str, int, str, nn.Module, nn.Module]]:
        """The sites to train ((position, layer, prefix, module, teacher) where the kinds differ); one line naming
        --teacher-checkpoint when it is not the checkpoint the model was converted from.  Needs only the model's
        structure: fairseq-train calls it (patches/teacher_check.py) before it loads any weight or reads any batch."""
        from ..checkpoints.convert import attention_sites

        new = []
        for position, layer, prefix, module in attention_sites(model):
            teacher = self.teachers.get((position, layer))
            if teacher is None:
                raise AttentionConfigError(f"--teacher-checkpoint: {self.teacher_path} has no {position} attention "
                                           f"in layer {layer}; give the checkpoint the model was converted from")
            if _kind(teacher) is not _kind(module):
                new.append((position, layer, prefix, module, teacher))
        if not new:
            raise AttentionConfigError(f"--teacher-checkpoint: every attention of the model is of the same kind as "
                                       f"in {self.teacher_path}; there is nothing to transfer")
        trained = tuple(prefix + "." for _, _, prefix, _, _ in new)
        for name, p in model.named_parameters():
            ref = self.teacher_weights.get(name)
            if not name.startswith(trained) and (ref is None or ref.shape != p.shape):
                raise AttentionConfigError(f"--teacher-checkpoint: {name} is {list(p.shape)} in the model but "
                                           f"{None if ref is None else list(ref.shape)} in {self.teacher_path}; "
                                           f"sizes do not fit")
        return new

    def _attach(self, model: nn.Module) -> None:
        new = self.check_student(model)
        trained = tuple(prefix + "." for _, _, prefix, _, _ in new)
        mismatched = []
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(trained))
            ref = self.teacher_weights[name] if not name.startswith(trained) else None
            if ref is not None and not torch.equal(ref.to(p.device, p.dtype), p.detach()):
                mismatched.append(name)
        self.teacher_weights = None
        if mismatched:
            logger.warning(f"attention transfer: {len(mismatched)} frozen weights (e.g. {mismatched[0]}) differ from "
                           f"{self.teacher_path}: the teachers see hidden states their model did not produce")
        for position, layer, _, module, teacher in new:
            ref = next(module.parameters())
            teacher.to(device=ref.device, dtype=ref.dtype).eval()
            module.register_forward_hook(self._hook(position, layer, teacher), with_kwargs=True)
            self.sites.append((position, layer))
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        logger.info(f"attention transfer: training {len(new)} attention modules ({n_train:,} of {n_all:,} "
                    f"parameters) against {self.teacher_path}: " +
                    ", ".join(f"{p} layer {i}" for p, i in self.sites))
        self.hooked = weakref.ref(model)

    def _hook(self, position: str, layer: int, teacher: nn.Module):
        def hook(module, args, kwargs, output):
            call = dict(zip(("query", "key", "value"), args))
            call.update(kwargs)
            with torch.no_grad():
                target, _ = teacher(query=call["query"], key=call.get("key"), value=call.get("value"),
                                    key_padding_mask=call.get("key_padding_mask"), need_weights=False,
                                    static_kv=call.get("static_kv", False), attn_mask=call.get("attn_mask"))
            self.captured[(position, layer)] = (output[0], target)
            return (target, output[1])  # later layers see what the original model computed

        return hook

    # --- the loss -------------------------------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        if self.hooked() is not model:
            self._attach(model)
        self.captured.clear()
        net_input = sample["net_input"]
        model(**net_input)
        src = net_input["src_tokens"]
        real = {"encoder": src.ne(self.task.source_dictionary.pad()),
                "decoder": net_input.get("prev_output_tokens", src).ne(self.task.target_dictionary.pad())}
        real["cross"] = real["decoder"]
        loss = 0.0
        logging_output = {"ntokens": sample["ntokens"], "nsentences": sample["target"].size(0), "sample_size": 1}
        for position, layer in self.sites:
            student, target = self.captured[(position, layer)]
            keep = real[position].t().unsqueeze(-1).to(student.dtype)  # [T, B, 1], outputs are time first
            err = ((student.float() - target.float()) ** 2 * keep).sum() / (keep.sum() * student.size(-1)).clamp(min=1)
            loss = loss + err
            logging_output[f"mse_{SHORT[position]}{layer}"] = err.detach()
        logging_output["loss"] = loss.detach()
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        size = sum(log.get("sample_size", 0) for log in logging_outputs) or 1
        keys = sorted({k for log in logging_outputs for k in log if k == "loss" or k.startswith("mse_")})
        for key in keys:
            total = sum(float(log.get(key, 0)) for log in logging_outputs)
            metrics.log_scalar(key, total / size, size, round=6)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _kind(module: nn.Module) -> type:
    """The attention's kind: fairseq's MultiheadAttention and the plugin's softmax kind (the same weights and
    function, with a fused training path) are one kind."""
    from fairseq.modules import MultiheadAttention

    from ..modules.softmax_attention import SoftmaxAttention

    return MultiheadAttention if type(module) in (MultiheadAttention, SoftmaxAttention) else type(module)
