"""`associative_recall` task and `recall_accuracy` criterion: fairseq's language-modelling task on the sequences of
kvattn_fairseq/data/recall.py, with every target but the answers set to padding, so that training and scoring see
only the recalled values.

An answer is the position of a query: a key token (symbol k<digits>) that already occurred earlier in the same
sequence, whose next token is a value (v<digits>).  Each batch also carries `recall_distance` [B, T]: how many
positions back the key last occurred (0 where there is no answer), which the evaluator splits at the window.
"""
import re
from dataclasses import dataclass, field

import torch

from fairseq import metrics
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.data import BaseWrapperDataset
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from ..util.errors import OneLineError


def symbol_mask(dictionary, prefix: str) -> torch.Tensor:
    pattern = re.compile(re.escape(prefix) + r"\d+")
    return torch.tensor([bool(pattern.fullmatch(dictionary[i])) for i in range(len(dictionary))])


def answers(tokens: torch.Tensor, target: torch.Tensor, is_key: torch.Tensor, is_value: torch.Tensor):
    """(answer mask [B, T], distance [B, T]) for inputs `tokens` and next tokens `target`."""
    tlen = tokens.size(1)
    pos = torch.arange(tlen, device=tokens.device)
    earlier = (tokens.unsqueeze(2) == tokens.unsqueeze(1)) & (pos.view(1, 1, -1) < pos.view(1, -1, 1))
    last = torch.where(earlier, pos.view(1, 1, -1), -1).amax(dim=2)  # most recent earlier occurrence, or -1
    mask = is_key[tokens] & (last >= 0) & is_value[target]
    return mask, torch.where(mask, pos.view(1, -1) - last, 0)


class AnswerTargets(BaseWrapperDataset):
    """fairseq's MonolingualDataset batches with targets kept only at answers; ntokens counts the answers."""

    def __init__(self, dataset, dictionary):
        super().__init__(dataset)
        self.pad = dictionary.pad()
        self.is_key, self.is_value = symbol_mask(dictionary, "k"), symbol_mask(dictionary, "v")

    def collater(self, samples):
        sample = self.dataset.collater(samples)
        if not sample:
            return sample
        mask, distance = answers(sample["net_input"]["src_tokens"], sample["target"], self.is_key, self.is_value)
        sample["target"] = sample["target"].masked_fill(~mask, self.pad)
        sample["recall_distance"] = distance
        sample["ntokens"] = int(mask.sum())
        return sample


@dataclass
class AssociativeRecallConfig(LanguageModelingConfig):
    sample_break_mode: str = field(default="eos", metadata={"help": "one sequence per sample (the only mode)"})


@register_task("associative_recall", dataclass=AssociativeRecallConfig)
class AssociativeRecallTask(LanguageModelingTask):
    @classmethod
    def setup_task(cls, args, **kwargs):
        if getattr(args, "sample_break_mode", "eos") != "eos":
            raise OneLineError("--sample-break-mode: associative_recall reads one sequence per sample (eos)")
        return super().setup_task(args, **kwargs)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        self.datasets[split] = AnswerTargets(self.datasets[split], self.dictionary)
        return self.datasets[split]


@register_criterion("recall_accuracy", dataclass=CrossEntropyCriterionConfig)
class RecallAccuracyCriterion(CrossEntropyCriterion):
    """Cross-entropy on the answers, with the share of answers whose argmax is right logged as `accuracy`."""

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, _ = self.compute_loss(model, net_output, sample, reduce=reduce)
        target = sample["target"]
        scored = target.ne(self.padding_idx)
        right = (net_output[0].argmax(-1) == target) & scored
        n = int(scored.sum())
        return loss, n, {"loss": loss.data, "ntokens": n, "nsentences": target.size(0), "sample_size": n,
                         "n_answers": n, "n_right": int(right.sum())}

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        CrossEntropyCriterion.reduce_metrics(logging_outputs)
        for key in ("n_answers", "n_right"):
            metrics.log_scalar_sum(key, sum(log.get(key, 0) for log in logging_outputs))
        metrics.log_derived("accuracy", lambda m: round(100 * m["n_right"].sum / max(m["n_answers"].sum, 1), 2))
