"""kvattn_fairseq/papers: each paper file's tables agree with its recipes and with the architectures the plugin
registers, and a result finds its table."""
import pytest

from kvattn_fairseq.modules.registry import position_dest
from kvattn_fairseq.papers import PAPERS, RECIPES, TABLES, default_table, paper_file
from kvattn_fairseq.run import train as E
from kvattn_fairseq.run.hydra import parse_training_args


@pytest.mark.parametrize("name", list(TABLES))
def test_rows_declare_the_model_their_recipe_builds(name):
    """A row's attention layout (and heads) is what the table matches results by: it must be what fairseq-train
    builds from the row's recipe, --kind and flags."""
    table = TABLES[name]
    assert table.rows and len({r.name for r in table.rows}) == len(table.rows)
    for row in table.rows:
        recipe = RECIPES[row.recipe]
        arch, flags, _ = E.train_args(row.recipe, row.kind, extra=row.flags)
        args, _ = parse_training_args(["D", "--task", recipe.task, "--arch", arch, *flags])
        positions = E.positions_of(arch)
        assert dict(row.attention) == {p: getattr(args, position_dest(p)) for p in positions}, row.name
        if row.heads is not None:
            assert args.decoder_attention_heads == row.heads, row.name
        for dest, value in row.options.items():
            assert str(getattr(args, dest)) == value, row.name
        assert table.positions() == positions


def test_every_recipe_and_table_has_one_home():
    for paper in PAPERS:
        for recipe in paper.RECIPES:
            assert RECIPES[recipe.name] is recipe and paper_file(recipe.name) == f"kvattn_fairseq/papers/" \
                                                                                f"{paper.__name__.split('.')[-1]}.py"
        for table in paper.TABLES:
            assert TABLES[table.name] is table


def test_published_numbers_sit_on_their_rows():
    mgk = TABLES["mgk_lm"]
    assert mgk.row("mgk4").published == {"valid_ppl": 33.28, "test_ppl": 34.21}
    assert mgk.row("smgk4").published == {}  # no such row in the paper's Table 3
    assert TABLES["kv_synthetic"].row("swap-kv_asym").published == {"accuracy": 0.6711}


@pytest.mark.parametrize("task,model,table", [
    ("wmt", {"arch": "transformer", "attention": {"encoder": "softmax"}}, "memsizer_mt"),
    ("lm", {"arch": "mgk_lm_wiki103_mlk4", "attention": {"decoder": "mlk"}}, "mgk_lm"),
    ("lm", {"arch": "memsizer_lm_tiny", "attention": {"decoder": "memsizer"}}, "memsizer_lm"),
    ("lm", {"arch": "kvattn_lm_tiny", "attention": {"decoder": "smgk"}}, "mgk_lm"),
    ("lm", {"arch": "transformer_lm", "attention": {"decoder": "softmax"}}, "memsizer_lm"),
    ("synthetic", {"arch": "kv_synthetic", "attention": {}}, "kv_synthetic"),
])
def test_a_result_finds_its_table(task, model, table):
    assert default_table(task, model) == table
