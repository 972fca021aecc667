"""`python -m kvattn_fairseq.synthetic --task TASK --out DIR ...`: the Key-Value Transformer paper's synthetic tasks
as fairseq translation data (kvattn_fairseq/data/synthetic.py)."""
import sys

from .data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
