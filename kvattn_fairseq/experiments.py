"""`python -m kvattn_fairseq.experiments {list,show,train,hydra-configs}`: the papers' recipes as fairseq-train
commands.  The recipes are in kvattn_fairseq/papers, the command in kvattn_fairseq/run/train.py."""
import sys

from .run.train import main

if __name__ == "__main__":
    sys.exit(main())
