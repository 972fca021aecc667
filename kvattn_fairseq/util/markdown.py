"""The one way a Markdown table is drawn (papers' tables, the benchmark's summaries)."""
from typing import Iterable, List, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence]) -> List[str]:
    """The table's lines: the header, the separator, one line per row (cells as str())."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
