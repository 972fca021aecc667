"""Data preparation for the papers' tasks: WMT16 En-De, CNN/DailyMail, WikiText-103 and the Key-Value
Transformer's synthetic tasks.

    python -m kvattn_fairseq.data.wmt16       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.cnndm       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.wikitext103 --out OUTDIR [--raw DIR] [--tiny] [--workers N]
    python -m kvattn_fairseq.data.fixtures {wmt16,cnndm,wikitext103} DIR
    python -m kvattn_fairseq synthetic --task reverse --out DIR       (kvattn_fairseq/data/synthetic.py)
    python -m kvattn_fairseq toydata reverse DIR                       (toy.py: toy data for tests and the demo)

(`scripts/prepare-*.sh` are one-line wrappers of the first three; DATASETS below runs them in process.)  Each
downloads the published files (resumable) or takes them from --raw, builds OUTDIR in a sibling
temporary directory, and renames it into place with OUTDIR/prepare.json written last.  Nothing here imports torch
or fairseq: binarization runs fairseq-preprocess in a subprocess.
"""
import argparse
import importlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Dataset:
    """A data set the experiments can prepare: its module (data/<module>.py) holds PROG, OPTIONS (its own options
    and their defaults, which its command line uses too), command_parser() and prepare(args); `fixtures` writes a
    small copy in the published formats (--tiny)."""
    name: str
    module: str
    summary: str
    fixtures: Optional[str] = None  # the writer's name in data/fixtures.py

    def load(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def options(self, **given: Any) -> Dict[str, Any]:
        """The data set's own options (source/target language, ...), defaults filled in."""
        own = dict(getattr(self.load(), "OPTIONS", {}))
        unknown = sorted(set(given) - set(own))
        if unknown:
            raise KeyError(f"{self.name} has no option(s) {unknown}")  # a spec's bug
        return {**own, **given}

    def prepare(self, out: str, *, raw: Optional[str] = None, tiny: bool = False, force: bool = False,
                workers: Optional[int] = None, **options: Any) -> None:
        """Prepare the data set into `out`, in this process (the same code as its command line); bad input or a
        failed step raises util.errors.OneLineError."""
        from . import build, common

        module = self.load()
        args = argparse.Namespace(out=out, raw=raw, download_dir=None, tiny=tiny, force=force,
                                  workers=workers or min(8, os.cpu_count() or 1), bpe_size=None,
                                  ignore_checksums=False, **self.options(**options))
        common.PROG = module.PROG
        build.run(module.prepare, args)

    def write_fixtures(self, out: str) -> List[str]:
        from . import fixtures

        return getattr(fixtures, self.fixtures)(out)


DATASETS: Dict[str, Dataset] = {d.name: d for d in (
    Dataset("wmt16", "wmt16", "WMT16 English-German (newstest2013 valid, newstest2014 test), 32k joint BPE",
            fixtures="wmt16"),
    Dataset("cnndm", "cnndm", "CNN/DailyMail summarization, 32k joint BPE", fixtures="cnndm"),
    Dataset("wikitext103", "wikitext103", "WikiText-103, word level", fixtures="wikitext103"),
)}


def dataset(name: str) -> Dataset:
    return DATASETS[name]
