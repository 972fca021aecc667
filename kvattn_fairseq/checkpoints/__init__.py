"""Checkpoint tools and what the plugin knows about checkpoint files.

    python -m kvattn_fairseq convert              convert.py: another attention plan, the weights carried over
    python -m kvattn_fairseq convert-chain        chain.py: convert, attention transfer, finetune (scripts/convert.sh)
    python -m kvattn_fairseq average-checkpoints  average.py: the mean of the last N checkpoints

config.py reads a checkpoint's model and task config, plan.py its attention plan record, files.py which checkpoint
files are whole and which one a resume uses.  The hooks into fairseq that use them are in patches/.
"""
