"""Speed and memory of every registered attention kind against fairseq's vanilla transformer, in one run.

    python -m kvattn_fairseq.bench --mode quick      # a few minutes on 2 CPU cores
    python -m kvattn_fairseq.bench --mode full       # longer sequences, more settings
    python -m kvattn_fairseq.bench --mode gpu --device cuda   # fp16/bf16, batch up to 128, t up to 8192 (gpu.py)

Parts: LM decoding through fairseq's SequenceGenerator (per-step time and state bytes against generated length),
translation throughput at beam 4, and training speed / peak memory of a causal layer stack against T.  Results are
ratios against fairseq's own `transformer_lm` / `transformer` of the same size, measured in the same run, and against
the attention-free floor (floor.py).
"""
