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
    checked = set()
    for row in table.rows:
        recipe = RECIPES[row.recipe]
        # rows that differ only in the seed, or in the recipe's name (one recipe per synthetic task), build the same
        # model: parse each model once (the KV classification sweep has 720 rows)
        key = (recipe.task, recipe.arch, recipe.flags, row.kind, tuple(E._apply(row.flags, drop=["--seed"])), row.heads,
               tuple(sorted(row.options.items())), tuple(sorted(row.attention.items())))
        if key in checked:
            continue
        checked.add(key)
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
    assert TABLES["kv_classification"].row("swap-kv_asym-d256-l4-h2-n128-s3").published == {
        "position_accuracy": 0.6711, "position_accuracy_std": 0.37}
    assert TABLES["kv_classification"].row("reverse-kv-d64-l2-h4-n64-s1").published == {
        "position_accuracy": 0.7046, "position_accuracy_std": 0.37}


def test_the_kv_classification_rows_are_the_papers_sweep():
    """Every task x kind x configuration of Reverse_sort_pos.py's sweep, 3 runs each, with the model it names."""
    rows = TABLES["kv_classification"].rows
    assert len(rows) == 5 * 3 * 16 * 3
    row = TABLES["kv_classification"].row("sort-softmax-d256-l4-h2-n128-s2")
    arch, flags, _ = E.train_args(row.recipe, row.kind, extra=row.flags)
    args, _ = parse_training_args(["D", "--task", "kv_position_classification", "--arch", arch, *flags])
    assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_layers, args.encoder_attention_heads,
            args.seed, args.encoder_attention_type, args.encoder_normalize_before) == (256, 512, 4, 2, 2, "softmax",
                                                                                      False)
    assert row.data == "synthetic-sort-len128" and TABLES["kv_classification"].row(
        "sort-softmax-d256-l4-h2-n64-s2").data == "synthetic-sort"


@pytest.mark.parametrize("task,model,table", [
    ("wmt", {"arch": "transformer", "attention": {"encoder": "softmax"}}, "memsizer_mt"),
    ("lm", {"arch": "mgk_lm_wiki103_mlk4", "attention": {"decoder": "mlk"}}, "mgk_lm"),
    ("lm", {"arch": "memsizer_lm_tiny", "attention": {"decoder": "memsizer"}}, "memsizer_lm"),
    ("lm", {"arch": "kvattn_lm_tiny", "attention": {"decoder": "smgk"}}, "mgk_lm"),
    ("lm", {"arch": "transformer_lm", "attention": {"decoder": "softmax"}}, "memsizer_lm"),
    ("synthetic", {"arch": "kv_synthetic", "attention": {}}, "kv_synthetic"),
    ("classify", {"arch": "kv_position_classifier", "attention": {"encoder": "linear"}}, "kv_classification"),
])
def test_a_result_finds_its_table(task, model, table):
    assert default_table(task, model) == table
