"""`python tests/dump_ranks.py DIR fairseq-train-args...`, one per worker under torchrun: fairseq-train as its console
script runs it, with every worker writing what it holds into DIR/rank{R}-{when}.pt (model parameters and buffers,
optimizer state, update count) right after the trainer loaded a checkpoint and after each of fairseq's checkpoint
saves, so a test can compare the workers: rank 0 reads the file, the others receive it through fairseq's broadcast."""
import os
import sys

import torch
from fairseq import checkpoint_utils
from fairseq.trainer import Trainer
from fairseq_cli import train

OUT = sys.argv.pop(1)


def dump(trainer, when: str) -> None:
    state = {"model": {k: v.detach().clone() for k, v in trainer.get_model().state_dict().items()},
             "optimizer": trainer.optimizer.state_dict(), "updates": trainer.get_num_updates()}
    torch.save(state, os.path.join(OUT, f"rank{trainer.data_parallel_rank}-{when}.pt"))


def after_load(load):
    def loaded(self, *args, **kwargs):
        out = load(self, *args, **kwargs)
        dump(self, "loaded")
        return out
    return loaded


def after_save(save):
    def saved(cfg, trainer, *args, **kwargs):
        out = save(cfg, trainer, *args, **kwargs)
        dump(trainer, "saved")
        return out
    return saved


Trainer.load_checkpoint = after_load(Trainer.load_checkpoint)  # the plugin's own layers wrap this one
checkpoint_utils.save_checkpoint = after_save(checkpoint_utils.save_checkpoint)

if __name__ == "__main__":
    train.cli_main()
