"""`kv_position_classification`: a label for every input position, the Key-Value Transformer paper's synthetic-task
setup (an encoder-only classifier; docs/papers/kv-transformer.md, "Synthetic tasks").

Data: the binarized pairs `python -m kvattn_fairseq synthetic` writes (DATA/{split}.src-tgt.{src,tgt}.{bin,idx} and
the dictionaries), read as inputs and per-position labels: the label of position i is symbol i of the target line,
so a target must be exactly as long as its input.  The end-of-sentence symbol fairseq-preprocess appends to both is
dropped (the paper's sequences have no special symbols).  The classes are the label dictionary's symbols after its
special ones, in order: class c is symbol c of the synthetic tasks' alphabet.
"""
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from fairseq.data import FairseqDataset, data_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..util.errors import OneLineError

IGNORE = -100  # the label of padding: torch's default ignore_index


class PositionLabelDataset(FairseqDataset):
    """Inputs and their per-position classes; batches are right-padded (labels with IGNORE)."""

    def __init__(self, inputs, labels, dictionary, label_dictionary, shuffle: bool):
        self.inputs, self.labels, self.shuffle = inputs, labels, shuffle
        self.pad, self.label_offset = dictionary.pad(), label_dictionary.nspecial
        self.sizes = np.asarray(inputs.sizes) - 1  # without the end-of-sentence symbol

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"id": index, "source": self.inputs[index][:-1], "target": self.labels[index][:-1] - self.label_offset}

    def collater(self, samples):
        if not samples:
            return {}
        target = data_utils.collate_tokens([s["target"] for s in samples], IGNORE)
        if bool((target[target != IGNORE] < 0).any()):
            bad = next(s["id"] for s in samples if bool((s["target"] < 0).any()))
            raise OneLineError(f"labels of sequence {bad}: a special or unknown symbol is not a class (the labels "
                               f"must be symbols of the label dictionary)")
        lengths = torch.LongTensor([len(s["source"]) for s in samples])
        return {"id": torch.LongTensor([s["id"] for s in samples]), "nsentences": len(samples),
                "ntokens": int(lengths.sum()), "target": target,
                "net_input": {"src_tokens": data_utils.collate_tokens([s["source"] for s in samples], self.pad),
                              "src_lengths": lengths}}

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        """By length (ties in a random order when shuffling), as fairseq's LanguagePairDataset."""
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]


@dataclass
class PositionClassificationConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={
        "help": "directory of binarized inputs and labels (python -m kvattn_fairseq synthetic: DIR/data-bin)"})
    source_lang: str = field(default="src", metadata={"help": "suffix of the inputs' files"})
    target_lang: str = field(default="tgt", metadata={"help": "suffix of the per-position labels' files"})


@register_task("kv_position_classification", dataclass=PositionClassificationConfig)
class PositionClassificationTask(FairseqTask):
    """Per-position classification over an encoder (architectures of the model kv_position_classifier)."""

    def __init__(self, cfg: PositionClassificationConfig, dictionary, label_dictionary):
        super().__init__(cfg)
        self.dictionary, self.label_dictionary = dictionary, label_dictionary

    @classmethod
    def setup_task(cls, cfg: PositionClassificationConfig, **kwargs):
        if not cfg.data:
            raise OneLineError("DATA: give the data directory (python -m kvattn_fairseq synthetic's DIR/data-bin)")
        data = cfg.data.split(os.pathsep)[0]
        dicts = []
        for lang in (cfg.source_lang, cfg.target_lang):
            path = os.path.join(data, f"dict.{lang}.txt")
            if not os.path.isfile(path):
                raise OneLineError(f"DATA: {path} is missing (expected the binarized data of python -m "
                                   f"kvattn_fairseq synthetic, DIR/data-bin; --source-lang/--target-lang name the "
                                   f"suffixes)")
            dicts.append(cls.load_dictionary(path))
        if len(dicts[1]) <= dicts[1].nspecial:
            raise OneLineError(f"DATA: {os.path.join(data, f'dict.{cfg.target_lang}.txt')} holds no label symbols")
        return cls(cfg, *dicts)

    @property
    def num_classes(self) -> int:
        return len(self.label_dictionary) - self.label_dictionary.nspecial

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.label_dictionary

    def class_symbol(self, c: int) -> str:
        return self.label_dictionary[self.label_dictionary.nspecial + c]

    def load_dataset(self, split, epoch=1, combine=False, task_cfg=None, **kwargs):
        cfg = task_cfg or self.cfg
        data = cfg.data.split(os.pathsep)[0]
        prefix = os.path.join(data, f"{split}.{cfg.source_lang}-{cfg.target_lang}.")
        inputs = data_utils.load_indexed_dataset(prefix + cfg.source_lang, self.dictionary)
        labels = data_utils.load_indexed_dataset(prefix + cfg.target_lang, self.label_dictionary)
        for found, lang in ((inputs, cfg.source_lang), (labels, cfg.target_lang)):
            if found is None:
                raise OneLineError(f"DATA: {prefix}{lang}.bin/.idx missing: no '{split}' split")
        if len(inputs) != len(labels):
            raise OneLineError(f"DATA: {prefix}{cfg.target_lang} holds {len(labels)} label lines for "
                               f"{len(inputs)} inputs")
        differ = np.flatnonzero(np.asarray(inputs.sizes) != np.asarray(labels.sizes))
        if len(differ):
            i = int(differ[0])
            raise OneLineError(f"DATA: {prefix}{cfg.target_lang}: line {i + 1} has {labels.sizes[i] - 1} labels "
                               f"for {inputs.sizes[i] - 1} input symbols (a label per position is needed)")
        empty = np.flatnonzero(np.asarray(inputs.sizes) <= 1)
        if len(empty):
            raise OneLineError(f"DATA: {prefix}{cfg.source_lang}: line {int(empty[0]) + 1} is empty")
        self.datasets[split] = PositionLabelDataset(inputs, labels, self.dictionary, self.label_dictionary,
                                                    shuffle=split == "train")
        return self.datasets[split]
