"""The types every paper file fills in: a training Recipe, a table's Rows, and the Table itself.

A paper file (memsizer.py, mgk.py, kv.py) is the one home of what this repository knows about one paper: the
fairseq-train recipes with the source of every value, the rows of each of its tables with the paper's published
numbers, and how each table is drawn.  The architectures the recipes name are registered by the plugin
(kvattn_fairseq/models/architectures.py); a test checks that every row's declared attention layout is what its
recipe builds.
"""
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple


def flags(text: str) -> Tuple[str, ...]:
    """A block of fairseq flags as written on a command line; `#` starts a comment (the source of a value)."""
    return tuple(shlex.split(text, comments=True))


# fairseq's adaptive_loss needs the adaptive softmax of the full-size language models; --tiny models have a plain
# output layer, so their recipes train with cross-entropy instead.
LM_TINY = flags("--criterion cross_entropy")


@dataclass(frozen=True)
class Recipe:
    """One fairseq-train configuration of a paper (`python -m kvattn_fairseq experiments show NAME`)."""
    name: str
    summary: str
    task: str                      # fairseq --task
    arch: str                      # fairseq --arch (one of the plugin's architectures)
    flags: Tuple[str, ...]         # the rest of the fairseq-train command line
    source: str                    # where the values come from (primary source; docs/papers/*.md)
    data: str                      # what DATA_BIN must hold, and how to make it
    tiny: Tuple[str, ...] = ()     # extra --tiny settings (replace the flag's value, or add it)


@dataclass(frozen=True)
class Row:
    """One trained model of a table: a recipe, optionally with one attention kind everywhere it fits."""
    name: str                           # --rows value; the run's directory and results file name
    label: str                          # how the table names it
    recipe: str                         # the Recipe it trains
    attention: Mapping[str, str]        # attention kind per position of the trained model (checked by a test)
    kind: Optional[str] = None          # --kind override of the recipe's own layout
    heads: Optional[int] = None         # decoder heads, for tables whose rows differ in heads only
    flags: Tuple[str, ...] = ()         # fairseq-train flags of this row, after the recipe's (the user's `--` win)
    # attention-kind options of the trained model (e.g. {"mgk_pi": "em"}, checked by a test): a result lands in the
    # row only with these values, and in the row that names most of its options when several match
    options: Mapping[str, str] = field(default_factory=dict)
    data: Optional[str] = None          # dataset key, when not the table's
    published: Mapping[str, float] = field(default_factory=dict)  # the paper's numbers for this row, by metric


@dataclass(frozen=True)
class Table:
    """One paper table: the rows to train, how to evaluate them, and how the Markdown is drawn from results."""
    name: str                                      # `run-table.sh NAME`, and the results' "table" field
    title: str                                     # the Markdown heading
    evaluate: str                                  # kvattn_fairseq.evaluate subcommand
    data: str                                      # dataset key: wmt16, cnndm, wikitext103 or synthetic-<task>
    rows: Tuple[Row, ...]
    draw: Callable[["Table", List[Dict], Optional[Dict]], List[str]]  # (table, its results, bench) -> lines
    # the evaluator's options (evaluate/registry.py: its OPTIONS; "extra": fairseq's own flags)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    tiny_evaluation: Mapping[str, Any] = field(default_factory=dict)  # instead, with --tiny (untrained models
    #                                                                   decode to their maximum length)
    checkpoint: str = "checkpoint_best.pt"
    extra_kinds: bool = True                       # --kinds may add rows (the last row's recipe, kind everywhere)
    notes: Tuple[str, ...] = ()                    # lines under the table: settings, sources, caveats

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def data_of(self, row: Row) -> str:
        return row.data or self.data

    def positions(self) -> Tuple[str, ...]:
        return tuple(self.rows[0].attention)
