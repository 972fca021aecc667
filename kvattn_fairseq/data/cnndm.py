"""CNN/DailyMail summarization, non-anonymized and cased: abisee's story files and URL lists, article and highlights
extracted exactly as HuggingFace `cnn_dailymail` 3.0.0 does (so the references match the usual ones), a
sentencepiece BPE instead of GPT-2's (no network-fetched encoder files), sources truncated to fit 1024 positions as
fairseq's BART recipe (`--truncate-source`) does, and a joined dictionary.

    python -m kvattn_fairseq.data.cnndm --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
                                        [--max-source-positions 1024]

OUTDIR/data-bin (fairseq-preprocess -s source -t target, train/valid/test), OUTDIR/spm.model, OUTDIR/test.source
(the full articles, raw), OUTDIR/test.target (the highlights joined by spaces, one summary per line), OUTDIR/
test.ref.jsonl (one JSON list of reference sentences, the highlights, per line: for ROUGE-Lsum), all in the
binarized order, which is abisee's all_test.txt order; OUTDIR/prepare.json.  Examples without an article or
without highlights are dropped (114 in the real training split), as HuggingFace does.
"""
import functools
import hashlib
import json
import os
import shutil
from collections import Counter
from typing import Dict, List, Tuple

from ..util.cli import positive_int
from ..util.errors import OneLineError
from . import subword
from .build import Build, Sources, fairseq_preprocess, build_key, main, parser, options
from .common import Progress, clean, log
from .download import Remote

PROG = "prepare-cnndm"
VOCAB = 32000
SPM_SENTENCES = 4_000_000  # paragraphs sampled for the BPE (spm's own limit on its input)
TFDS = "TFDS url_checksums/cnn_dailymail.txt"
OPTIONS = {"max_source_positions": 1024}  # its own options and their defaults
HF = "https://huggingface.co/datasets/cnn_dailymail/resolve/11343c3752184397d56efc19a8a7cceb68089318/data/"
ABISEE = "https://raw.githubusercontent.com/abisee/cnn-dailymail/master/url_lists/"

# The story archives as published on Google Drive, served from HuggingFace (the revision its loading script pins, and
# a mirror); Drive itself answers large files with a confirmation page, so it is not a usable mirror.  The sizes and
# sha256s are those TFDS recorded for the Drive originals, which the HuggingFace copies are meant to duplicate.
CCDV = "https://huggingface.co/datasets/ccdv/cnn_dailymail/resolve/main/"
STORIES = {
    "cnn": Remote("cnn_stories.tgz", (HF + "cnn_stories.tgz", CCDV + "cnn_stories.tgz"), 158577824,
                  ("sha256", "e8fbc0027e54e0a916abd9c969eb35f708ed1467d7ef4e3b17a56739d65cb200", TFDS),
                  tree="cnn/stories"),
    "dailymail": Remote("dailymail_stories.tgz",
                        (HF + "dailymail_stories.tgz", CCDV + "dailymail_stories.tgz"), 375893739,
                        ("sha256", "ad69010002210b7c406718248ee66e65868b9f6820f163aa966369878d14147e", TFDS),
                        tree="dailymail/stories"),
}
URL_LISTS = {
    "train": Remote("all_train.txt", (ABISEE + "all_train.txt",), 46424688,
                    ("sha256", "a5cee49f3a6c862c26ce29308236d2a99625ab6c86a43be22d5206b2790d8029", TFDS)),
    "valid": Remote("all_val.txt", (ABISEE + "all_val.txt",), 2433674,
                    ("sha256", "81887e982b045083409c6ee838aede8ff4b97291605bcfb21bffc456a16991db", TFDS)),
    "test": Remote("all_test.txt", (ABISEE + "all_test.txt",), 2109547,
                   ("sha256", "c4f5efb5ec2126430a5c156efbd13d0e9c4cb490169e552c38b4a51981a009bd", TFDS)),
}

# A line not ending like a sentence gets " ." (image captions would otherwise run into the next sentence);
# the same rule and end tokens as See et al.'s make_datafiles.py and HuggingFace's loader.
END_TOKENS = (".", "!", "?", "...", "'", "`", '"', "\u2019", "\u201d", ")")


def one_line(text: str) -> str:
    """Characters that would start a new line for str.splitlines() become spaces: one example stays one line."""
    return " ".join(text.splitlines())


def parse_story(text: str) -> Tuple[List[str], List[str]]:
    """(article paragraphs, highlights) of a .story file."""
    article, highlights, next_is_highlight = [], [], False
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if "@highlight" not in line and line[-1] not in END_TOKENS:
            line += " ."
        if line.startswith("@highlight"):
            next_is_highlight = True
        elif next_is_highlight:
            highlights.append(one_line(line))
        else:
            article.append(one_line(line))
    return article, highlights


def url_hash(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def collect(split: str, url_list: str, folders: List[str], b: Build) -> dict:
    """The split's stories in URL-list order -> work/<split>.jsonl (and the raw test files for the test split)."""
    with open(url_list, encoding="utf-8") as f:
        urls = [u.strip() for u in f if u.strip()]
    if not urls:
        raise OneLineError(f"{url_list} lists no URLs: not one of abisee's url_lists files")
    missing, kept, empty = [], 0, 0
    bar = Progress(f"reading {split} stories", len(urls), unit="stories")
    out = open(os.path.join(b.work, f"{split}.jsonl"), "w", encoding="utf-8")  # a build step: rerun until stamped
    raw = None
    if split == "test":
        raw = [open(b.path(name), "w", encoding="utf-8") for name in ("test.source", "test.target", "test.ref.jsonl")]
    for url in urls:
        name = url_hash(url) + ".story"
        path = next((os.path.join(d, name) for d in folders if os.path.isfile(os.path.join(d, name))), None)
        bar.update()
        if path is None:
            missing.append(name)
            continue
        with open(path, "rb") as f:
            article, highlights = parse_story(f.read().decode("utf-8", errors="replace"))
        if not article or not highlights:
            empty += 1
            continue
        kept += 1
        out.write(json.dumps({"article": article, "highlights": highlights}, ensure_ascii=False) + "\n")
        if raw:
            raw[0].write(" ".join(article) + "\n")
            raw[1].write(" ".join(highlights) + "\n")
            raw[2].write(json.dumps(highlights, ensure_ascii=False) + "\n")
    bar.close()
    out.close()
    for f in raw or ():
        f.close()
    if missing:
        raise OneLineError(f"{len(missing)} of the {len(urls)} stories {os.path.basename(url_list)} lists are in "
                           f"neither cnn/stories nor dailymail/stories (first: {missing[0]}): the story archives are "
                           "incomplete or do not belong to these URL lists")
    log("%s: %d examples, %d without article or highlights dropped", split, kept, empty)
    return {"listed": len(urls), "examples": kept, "dropped_empty": empty}


def _examples(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def spm_sentences(path: str):
    for ex in _examples(path):
        for line in ex["article"] + ex["highlights"]:
            yield clean(line)


def _encode(chunk, max_source: int):
    rows, counts, truncated = [], Counter(), 0
    for ex in chunk:
        src = subword.pieces(clean(" ".join(ex["article"])))
        if len(src) > max_source - 1:  # room for the end-of-sentence token fairseq appends
            src = src[:max_source - 1]
            truncated += 1
        tgt = subword.pieces(clean(" ".join(ex["highlights"])))
        counts.update(src)
        counts.update(tgt)
        rows.append((" ".join(src), " ".join(tgt)))
    return rows, counts, truncated


def encode(b: Build, sizes: Dict[str, int], workers: int, max_source: int) -> dict:
    bpe = os.path.join(b.work, "bpe")
    os.makedirs(bpe, exist_ok=True)
    stats, train_counts = {}, Counter()
    for split in ("train", "valid", "test"):
        bar = Progress(f"encoding {split}", sizes[split], unit="examples")
        truncated = 0
        with open(os.path.join(bpe, f"{split}.source"), "w", encoding="utf-8") as fs, \
                open(os.path.join(bpe, f"{split}.target"), "w", encoding="utf-8") as ft:
            chunks = subword.chunked(_examples(os.path.join(b.work, f"{split}.jsonl")), 500)
            work = functools.partial(_encode, max_source=max_source)
            for rows, counts, t in subword.parallel(work, chunks, b.path("spm.model"), workers):
                fs.writelines(s + "\n" for s, _ in rows)
                ft.writelines(t_ + "\n" for _, t_ in rows)
                if split == "train":
                    train_counts.update(counts)
                truncated += t
                bar.update(len(rows))
        bar.close()
        stats[split] = {"sources_truncated": truncated}
    stats["dict_entries"] = subword.write_dict(b.path("spm.model"), train_counts, os.path.join(b.work, "dict.txt"))
    return stats


def binarize(b: Build, workers: int) -> dict:
    dest = b.path("data-bin")
    if os.path.exists(dest):  # a previous attempt stopped half-way
        shutil.rmtree(dest)
    bpe = os.path.join(b.work, "bpe")
    fairseq_preprocess(["--source-lang", "source", "--target-lang", "target", "--trainpref",
                        os.path.join(bpe, "train"), "--validpref", os.path.join(bpe, "valid"), "--testpref",
                        os.path.join(bpe, "test"), "--destdir", dest, "--joined-dictionary", "--srcdict",
                        os.path.join(b.work, "dict.txt"), "--workers", str(workers)])
    with open(os.path.join(dest, "dict.source.txt"), encoding="utf-8") as f:
        return {"dictionary_size": 4 + sum(1 for _ in f)}


def prepare(args) -> None:
    vocab = args.bpe_size or (subword.TINY_VOCAB if args.tiny else VOCAB)
    if Build.done(args.out, args.force, options(args, bpe_size=vocab)):
        return
    sources = Sources(list(STORIES.values()) + list(URL_LISTS.values()), args)
    with Build(args.out, build_key(args, bpe_size=vocab)) as b:
        folders = [sources.tree(r.name, b) for r in STORIES.values()]
        splits = {split: b.step(f"collect-{split}", lambda s=split, r=r: collect(s, sources.path(r.name), folders, b))
                  for split, r in URL_LISTS.items()}
        spm_info = b.step("sentencepiece", lambda: subword.train(
            spm_sentences(os.path.join(b.work, "train.jsonl")), b.path("spm"), vocab, args.workers, args.tiny,
            SPM_SENTENCES))
        sizes = {s: v["examples"] for s, v in splits.items()}
        encoded = b.step("encode", lambda: encode(b, sizes, args.workers, args.max_source_positions))
        binarized = b.step("binarize", lambda: binarize(b, args.workers))
        b.finish({
            "dataset": "cnn_dailymail", "prepared_by": "kvattn_fairseq.data.cnndm",
            "options": options(args, bpe_size=vocab), "sources": sources.record,
            "text": "HuggingFace cnn_dailymail 3.0.0 extraction (cased, non-anonymized, ' .' added to lines "
                    "without a sentence end)",
            "splits": {s: dict(v, **encoded[s]) for s, v in splits.items()},
            "truncation": f"source cut to {args.max_source_positions - 1} pieces + </s> in data-bin; test.source "
                          "keeps the full article",
            "subword": spm_info,
            "data_bin": {"dir": "data-bin", "source_lang": "source", "target_lang": "target",
                         "joined_dictionary": True, **binarized},
            "references": {"test.target": "one summary per line", "test.ref.jsonl": "one JSON list of reference "
                           "sentences per line (join with newlines for rougeLsum)"},
            "decode": "fairseq-generate --bpe sentencepiece --sentencepiece-model OUTDIR/spm.model "
                      "(or --post-process sentencepiece)",
        })


def command_parser():
    p = parser(PROG, __doc__.split("\n\n")[0], VOCAB)
    p.add_argument("--max-source-positions", type=positive_int, default=OPTIONS["max_source_positions"], metavar="N",
                   help="sources are cut so that with </s> they fit N positions (default 1024, fairseq's BART "
                        "--truncate-source length)")
    return p


def cli(argv=None) -> int:
    return main(PROG, command_parser(), prepare, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
