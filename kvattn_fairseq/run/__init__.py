"""Running the papers' recipes and tables: the fairseq-train command of a recipe (train.py, behind
`python -m kvattn_fairseq experiments`), its fairseq-hydra-train config (hydra.py), a whole paper table from data to
Markdown (tables.py, behind `python -m kvattn_fairseq paper-tables`), and the Markdown from a directory of results
(report.py, behind scripts/make_tables.py).  Everything runs in this process except fairseq's own tools."""
