"""`python -m kvattn_fairseq.paper_tables TABLE --work DIR ...`: a paper's table end to end (scripts/run-table.sh).
The tables are in kvattn_fairseq/papers, the runner in kvattn_fairseq/run/tables.py."""
import sys

from .run.tables import main

if __name__ == "__main__":
    sys.exit(main())
