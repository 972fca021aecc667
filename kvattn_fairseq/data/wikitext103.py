"""WikiText-103, word level, as fairseq's language_model README prepares it: wiki.{train,valid,test}.tokens from
wikitext-103-v1.zip binarized with `fairseq-preprocess --only-source`, the dictionary being every word of the
training text (no threshold: the corpus's own 267k vocabulary, <unk> included).

    python -m kvattn_fairseq.data.wikitext103 --out OUTDIR [--raw DIR] [--tiny] [--workers N]

OUTDIR/data-bin (dict.txt, train/valid/test), OUTDIR/prepare.json.  Train with --task language_modeling and
evaluate with fairseq-eval-lm.  --tiny changes nothing here (the vocabulary is the data's), and there is no
--bpe-size: the text is already word-tokenized.
"""
import argparse
import codecs
import os
import shutil

from ..util.errors import OneLineError
from .build import Build, Sources, count_lines, fairseq_preprocess, build_key, main, parser, options
from .common import log
from .download import Remote, file_digest

PROG = "prepare-wikitext103"
SPLITS = ("train", "valid", "test")
MEMBERS = tuple(f"wikitext-103/wiki.{s}.tokens" for s in SPLITS)
# The original S3 bucket now refuses requests; the author's own site serves the same archive.
ZIP = Remote("wikitext-103-v1.zip", ("https://wikitext.smerity.com/wikitext-103-v1.zip",
                                     "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip"),
             None, ("md5", "9ddaacaf6af0710eda8c456decff7832", "torchtext's WikiText103 dataset"), MEMBERS)
# Content checks that hold however the files were obtained: gluonnlp's sha1 of each file, torchtext's line counts.
EXPECTED = {"train": ("b7497e2dfe77e72cfef5e3dbc61b7b53712ac211", 1801350),
            "valid": ("c326ac59dc587676d58c422eb8a03e119582f92b", 3760),
            "test": ("8a5befc548865cec54ed4273cf87dbbad60d1e47", 4358)}


def check_utf8(path: str) -> None:
    """fairseq-preprocess reads its input as UTF-8 text and stops deep inside with a traceback when it is not: such
    a file is refused in one line naming it and where its first byte that is not UTF-8 is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                at = max(0, e.start - len(e.object) + len(block))  # the error's position within this block
                line += block[:at].count(b"\n")
                raise OneLineError(f"{path} is not UTF-8 text (line {line}, byte {offset + at}: {e.reason}); give "
                                   f"the published wiki.*.tokens files") from None
            line += block.count(b"\n")
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise OneLineError(f"{path} is not UTF-8 text (it ends inside a character: {e.reason}); give the "
                               f"published wiki.*.tokens files") from None


def check_files(files: dict) -> dict:
    out = {}
    for split, member in zip(SPLITS, MEMBERS):
        sha1, lines = file_digest(files[member], "sha1"), count_lines(files[member])
        status = "verified" if (sha1, lines) == EXPECTED[split] else "differs from the published file"
        if status != "verified":
            check_utf8(files[member])
            log("WARNING: wiki.%s.tokens (%d lines) is not the published file (sha1 and %d lines per gluonnlp and "
                "torchtext); continuing with it", split, lines, EXPECTED[split][1])
        out[split] = {"lines": lines, "sha1": sha1, "content_check": status}
    if not out["train"]["lines"]:
        raise OneLineError(f"{files[MEMBERS[0]]} is empty")
    return out


def binarize(b: Build, files: dict, workers: int) -> dict:
    dest = b.path("data-bin")
    if os.path.exists(dest):  # a previous attempt stopped half-way
        shutil.rmtree(dest)
    fairseq_preprocess(["--only-source", "--trainpref", files[MEMBERS[0]], "--validpref", files[MEMBERS[1]],
                        "--testpref", files[MEMBERS[2]], "--destdir", dest, "--workers", str(workers)])
    with open(os.path.join(dest, "dict.txt"), encoding="utf-8") as f:
        return {"dictionary_size": 4 + sum(1 for _ in f)}


def prepare(args) -> None:
    if args.bpe_size is not None:
        raise OneLineError("--bpe-size does not apply: WikiText-103 is prepared at the word level")
    if Build.done(args.out, args.force, options(args)):
        return
    sources = Sources([ZIP], args)
    with Build(args.out, build_key(args)) as b:
        files = sources.members(ZIP.name, b)
        checked = b.step("check-files", lambda: check_files(files))
        binarized = b.step("binarize", lambda: binarize(b, files, args.workers))
        b.finish({
            "dataset": "wikitext-103", "prepared_by": "kvattn_fairseq.data.wikitext103",
            "options": options(args), "sources": sources.record,
            "splits": checked,
            "data_bin": {"dir": "data-bin", "only_source": True, "threshold": 0,
                         "content_check": "gluonnlp sha1 and torchtext line counts", **binarized},
        })


def command_parser():
    p = parser(PROG, __doc__.split("\n\n")[0], None)
    p.add_argument("--bpe-size", type=int, help=argparse.SUPPRESS)  # refused with a message, not argparse's
    return p


def cli(argv=None) -> int:
    return main(PROG, command_parser(), prepare, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
