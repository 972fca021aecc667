"""`python -m kvattn_fairseq.recall --out DIR [--tiny]`: associative recall beyond the attention window, every kind
against its decoding state (kvattn_fairseq/run/recall.py)."""
import sys

from .run.recall import main

if __name__ == "__main__":
    sys.exit(main())
