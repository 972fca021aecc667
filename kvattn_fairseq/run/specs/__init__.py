"""The experiments, one spec file each: what to prepare, train, evaluate and draw, as steps of run/spine.py.

    paper_tables.py  a paper's table (kvattn_fairseq/papers): data, one fairseq-train run per row, its evaluation,
                     the Markdown of every table run in the work directory (`python -m kvattn_fairseq paper-tables`)
    quality.py       real-text quality: the CPython documentation corpus, one fairseq-train run per configuration
                     (a short-context start first where asked), test perplexity by the lm evaluator, state bytes,
                     the table, plot and results.json (`python -m kvattn_fairseq quality`)
    recall.py        associative recall beyond the window against decoding state (`python -m kvattn_fairseq recall`)
    demo.py          `make demo`: a window decoder against a vanilla transformer on the generated reversal task, with
                     sacreBLEU, decoding speed and state side by side (`python -m kvattn_fairseq demo`)

A new experiment is a new file here with a `main(argv)` that builds its steps and hands them to spine.Runner, plus
its line in commands/__init__.py.
"""
