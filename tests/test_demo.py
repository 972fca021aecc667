"""The demo (`make demo`, run/specs/demo.py): its state column is what one hypothesis holds after t output tokens,
measured with fairseq's incremental decoder; its steps are a training, an evaluation and a state per model, then
results.json at every run; bad --models stop it before any work (the demo itself trains for minutes and is not run
here)."""
from types import SimpleNamespace

import pytest
import torch

from conftest import build_model as build
from kvattn_fairseq.evaluate.state import model_state_bytes
from kvattn_fairseq.run.specs import demo

SIZE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings"]


def test_the_window_decoder_state_stops_growing_and_vanillas_grows_by_one_key_and_value_per_token():
    torch.manual_seed(0)
    vanilla = build("transformer", *SIZE).eval()
    window = build("kvattn_transformer", *SIZE, *demo.MODELS["window"][1][2:]).eval()
    v = model_state_bytes(vanilla, (16, 40), source_tokens=7)
    w = model_state_bytes(window, (16, 40), source_tokens=7)
    # fp32 keys and values of 16 wide, 2 decoder layers: 128 B per layer and token
    assert v[40] - v[16] == 24 * 2 * 128
    assert w[40] == w[16] < v[16]
    # both keep the source's keys and values for softmax cross-attention: 7 tokens, 2 layers
    cross = 7 * 2 * 128
    assert w[16] >= cross + 2 * (int(demo.WINDOW) - 1) * 128
    longer = model_state_bytes(window, (16,), source_tokens=9)[16] - w[16]
    assert 2 * 2 * 128 <= longer < 2 * 2 * 128 + 64  # two more source tokens: their keys and values (and mask)


def test_the_steps_train_evaluate_and_measure_each_model_then_write_the_results_every_run(tmp_path):
    steps = demo.steps(SimpleNamespace(models=["vanilla", "window"], epochs=3, train_size=50), str(tmp_path))
    assert [s.name for s in steps] == ["data", "train/vanilla", "evaluate/vanilla", "state/vanilla",
                                       "train/window", "evaluate/window", "state/window", "results"]
    by_name = {s.name: s for s in steps}
    assert by_name["train/window"].resumable and by_name["results"].always
    assert set(by_name["results"].needs) == {s.name for s in steps[:-1]}
    assert by_name["data"].settings["train"] == 50 and "--max-epoch" in by_name["train/vanilla"].settings["flags"]
    by_name["train/window"].check()  # fairseq-train's own parser accepts the command


def test_unknown_models_stop_the_demo_before_any_work(tmp_path, capsys):
    work = tmp_path / "demo_out"
    with pytest.raises(SystemExit) as e:
        demo.main(["--workdir", str(work), "--models", "vanilla,nosuch"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--models: unknown nosuch" in err and len(err.strip().splitlines()) == 1
    assert not work.exists()
