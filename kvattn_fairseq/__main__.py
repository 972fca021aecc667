"""`python -m kvattn_fairseq COMMAND [ARGS] | --user-dir | --kinds | --archs | --patches` (commands/; the
`kvattn-fairseq` console script runs the same main)."""
import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
