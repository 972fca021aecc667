"""`python -m kvattn_fairseq.quality --out DIR [--context C] [--tiny]`: real-text quality against decoding state,
every kind at the same size and updates (kvattn_fairseq/run/quality.py)."""
import sys

from .run.quality import main

if __name__ == "__main__":
    sys.exit(main())
