"""A training step the way fairseq-train takes it with --fp16 or --bf16, without a dataset: the model cast as
fairseq's Trainer casts it, fairseq's own FP16Optimizer (fp32 master weights around Adam; the dynamic loss scaler
for fp16), the cross_entropy criterion's loss, then backward, gradient normalisation, clipping (where fp16
overflow is detected) and the update, in the Trainer's order.  Used by the benchmark's GPU mode and the CUDA tests.
"""
import functools
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .common import DTYPES


@functools.lru_cache(maxsize=None)
def _config(precision: str, lr: float, clip_norm: float, flatten: bool):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import kvattn_fairseq  # noqa: F401  (the compat fix that lets --bf16 run without torch_xla)

    flags = ["unused", "--task", "language_modeling", "--arch", "transformer_lm", "--optimizer", "adam", "--lr",
             str(lr), "--clip-norm", str(clip_norm)] + ([f"--{precision}"] if precision != "fp32" else [])
    if not flatten:
        flags.append("--fp16-no-flatten-grads")
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), flags))


def fairseq_optimizer(model, precision: str, lr: float = 1e-4, clip_norm: float = 0.0):
    """fairseq's optimizer for `precision` (fp16, bf16 or fp32), built from its own command-line flags."""
    from fairseq import optim

    params = [p for p in model.parameters() if p.requires_grad]
    # fairseq flattens fp16 master weights on the current CUDA device only
    cfg = _config(precision, lr, clip_norm, params[0].device.type == "cuda")
    if precision == "fp32":
        return optim.build_optimizer(cfg.optimizer, params), cfg
    return optim.FP16Optimizer.build_optimizer(cfg, params), cfg


def cast_like_trainer(model, precision: str):
    """fairseq's Trainer: model.half() for --fp16, bfloat16 weights for --bf16."""
    return model.to(dtype=DTYPES[precision]) if precision != "fp32" else model


def train_step(model, optimizer, cfg, loss_fn: Callable[[], torch.Tensor], sample_size: int) -> Dict:
    """backward, grads divided by the sample size, clip (fp16 overflow raises here), step: as Trainer.train_step."""
    model.train()
    optimizer.zero_grad()
    loss = loss_fn()
    optimizer.backward(loss)
    optimizer.multiply_grads(1.0 / sample_size)
    try:
        grad_norm = optimizer.clip_grad_norm(cfg.optimization.clip_norm)
    except OverflowError:  # fp16: the Trainer skips this update; the scaler has already lowered its scale
        optimizer.zero_grad()
        return {"loss": float(loss.detach()) / sample_size, "grad_norm": float("inf"), "overflow": True}
    optimizer.step()
    return {"loss": float(loss.detach()) / sample_size, "grad_norm": float(grad_norm), "overflow": False}


def lm_loss(model, tokens: torch.Tensor) -> Callable[[], torch.Tensor]:
    """fairseq's cross_entropy criterion on next-token prediction: summed NLL of fp32 log-probabilities."""
    def loss():
        net_output = model(tokens[:, :-1])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return F.nll_loss(lprobs.reshape(-1, lprobs.size(-1)), tokens[:, 1:].reshape(-1), reduction="sum")

    return loss


def translation_loss(model, src, src_lengths, prev, target) -> Callable[[], torch.Tensor]:
    def loss():
        net_output = model(src, src_lengths, prev)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        return F.nll_loss(lprobs.reshape(-1, lprobs.size(-1)), target.reshape(-1), reduction="sum")

    return loss
