"""Data preparation for the papers' tasks: WMT16 En-De, CNN/DailyMail and WikiText-103.

    python -m kvattn_fairseq.data.wmt16       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.cnndm       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.wikitext103 --out OUTDIR [--raw DIR] [--tiny] [--workers N]
    python -m kvattn_fairseq.data.fixtures {wmt16,cnndm,wikitext103} DIR

(`scripts/prepare-*.sh` wrap the first three.)  Each downloads the published files (resumable) or takes them from
--raw, builds OUTDIR in a sibling temporary directory, and renames it into place with OUTDIR/prepare.json written
last.  Nothing here imports torch or fairseq: binarization runs fairseq-preprocess in a subprocess.
"""
