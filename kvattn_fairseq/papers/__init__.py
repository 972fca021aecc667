"""One file per paper: its training recipes, its tables' rows with the published numbers, and how each table is
drawn (spec.py holds the types they fill in, markdown.py the drawing pieces).

Adding a row or a table to a paper touches that paper's file only; a new paper is a new file added to PAPERS.
"""
from typing import Dict

from . import kv, memsizer, mgk
from .spec import Recipe, Row, Table  # noqa: F401

PAPERS = (memsizer, mgk, kv)

RECIPES: Dict[str, Recipe] = {}
TABLES: Dict[str, Table] = {}
for _paper in PAPERS:
    for _recipe in _paper.RECIPES:
        assert _recipe.name not in RECIPES, _recipe.name
        RECIPES[_recipe.name] = _recipe
    for _table in _paper.TABLES:
        assert _table.name not in TABLES, _table.name
        TABLES[_table.name] = _table


def paper_file(recipe: str) -> str:
    """The file that holds a recipe, as a path in the repository."""
    paper = next(p for p in PAPERS if any(r.name == recipe for r in p.RECIPES))
    return paper.__name__.replace(".", "/") + ".py"


def default_table(task: str, model: Dict) -> str:
    """The table a result belongs to when the evaluation did not name one: the table whose rows train this
    architecture, else the first table of this evaluation task with a row of this attention layout, else the
    first table of the task."""
    tables = [t for t in TABLES.values() if t.evaluate == task]
    if not tables:
        raise KeyError(task)
    for t in tables:
        if any(RECIPES[row.recipe].arch == model.get("arch") and row.kind is None for row in t.rows):
            return t.name
    attention = model.get("attention") or {}
    for t in tables:
        if any(all(attention.get(p) == k for p, k in row.attention.items()) for row in t.rows):
            return t.name
    return tables[0].name
