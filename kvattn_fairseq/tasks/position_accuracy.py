"""`position_classification` criterion: cross-entropy over every labelled position (the paper's training loss,
averaged over positions), with the counts behind per-position and per-sequence accuracy logged as exact sums, so that
fairseq-train's validation lines show both accuracies."""
import math

import torch.nn.functional as F

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from .position_classification import IGNORE


@register_criterion("position_classification", dataclass=FairseqDataclass)
class PositionClassificationCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        logits = model(**sample["net_input"])  # [B, T, classes]
        target = sample["target"]
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                               reduction="sum" if reduce else "none")
        labelled = target != IGNORE
        right = (logits.argmax(-1) == target) & labelled
        positions = int(labelled.sum())
        return loss, positions, {
            "loss": loss.data, "ntokens": sample["ntokens"], "nsentences": target.size(0), "sample_size": positions,
            "n_positions": positions, "n_correct": int(right.sum()), "n_sequences": target.size(0),
            "n_seq_correct": int((right | ~labelled).all(dim=1).sum())}

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        total = lambda key: sum(log.get(key, 0) for log in logging_outputs)  # noqa: E731
        positions = total("n_positions")
        metrics.log_scalar("loss", total("loss") / max(positions, 1) / math.log(2), positions, round=3)
        for key in ("n_positions", "n_correct", "n_sequences", "n_seq_correct"):
            metrics.log_scalar_sum(key, total(key))
        metrics.log_derived("accuracy", lambda m: round(100 * m["n_correct"].sum / max(m["n_positions"].sum, 1), 2))
        metrics.log_derived("seq_accuracy",
                            lambda m: round(100 * m["n_seq_correct"].sum / max(m["n_sequences"].sum, 1), 2))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
