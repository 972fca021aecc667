"""`python -m kvattn_fairseq --user-dir | --kinds | --archs` (the `kvattn-fairseq` console script runs cli.main)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
