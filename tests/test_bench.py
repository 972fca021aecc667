"""The benchmark runs end to end (tiny sizes) and refuses to time a decoder that is not incremental.
Timings themselves are never asserted."""
import json
import os
import time

import pytest
import torch

from kvattn_fairseq.bench import decode
from kvattn_fairseq.bench.__main__ import main
from kvattn_fairseq.bench.common import BenchmarkError, Size, build_lm
from kvattn_fairseq.models.building import make_dictionary


@pytest.mark.slow
def test_smoke_run_writes_results_summary_and_plots(tmp_path):
    out = tmp_path / "bench"
    assert main(["--mode", "smoke", "--out", str(out), "--kinds", "memsizer,kv", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kinds"] == ["kv", "memsizer"]
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["torch_threads"] >= 1
    cfg = results["decode"]["configs"][0]
    assert set(cfg["models"]) == {"vanilla", "floor", "kv", "memsizer"}
    assert set(cfg["models"]["floor"]["state_bytes_per_hypothesis"].values()) == {0}  # no attention, no state
    state = cfg["models"]["memsizer"]["state_bytes_per_hypothesis"]
    assert len(set(state.values())) == 1  # constant in t
    growing = cfg["models"]["kv"]["state_bytes_per_hypothesis"]
    assert growing["16"] > growing["4"]
    assert set(results["translate"]["models"]) == {"vanilla", "floor", "kv", "memsizer"}
    for per_t in results["train"]["models"].values():
        assert all("tokens_per_s" in r and r["peak_bytes"] >= 0 for r in per_t.values())
    summary = (out / "summary.md").read_text()
    assert "| memsizer (constant state) |" in summary and "| floor |" in summary
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert len(pngs) >= 5


def test_non_incremental_decoding_fails_loudly():
    """A decoder that recomputes the whole prefix at every step (as one fairseq release silently did) is caught."""
    d = make_dictionary(50)
    model = build_lm("memsizer", Size(1, 16, 32, 2, 50), d, 32, torch.device("cpu"))
    forward = model.decoder.forward

    def full_recompute(prev_output_tokens, *args, incremental_state=None, **kwargs):
        return forward(prev_output_tokens, *args, incremental_state=None, **kwargs)

    model.decoder.forward = full_recompute
    with pytest.raises(BenchmarkError, match="not incremental"):
        decode.decode_lm(model, d, torch.device("cpu"), batch=1, beam=1, length=6, probe=(4,))


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--kinds", "memsizer,nope"])
    assert "--kinds: unknown attention kind(s) ['nope']" in capsys.readouterr().err


@pytest.mark.slow
def test_a_plan_is_benchmarked_and_its_state_grows_only_with_its_softmax_layers(tmp_path):
    out = tmp_path / "bench"
    assert main(["--mode", "smoke", "--parts", "decode,translate", "--out", str(out), "--device", "cpu",
                 "--kinds", "memsizer;memsizer,softmax"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kinds"] == ["memsizer", "memsizer,softmax"]
    state = {k: v["state_bytes_per_hypothesis"] for k, v in results["decode"]["configs"][0]["models"].items()}
    growth = {k: s["16"] - s["4"] for k, s in state.items()}
    assert growth["memsizer"] == 0
    assert growth["memsizer,softmax"] * 2 == growth["vanilla"] > 0  # one softmax layer of the two
    # the 1-layer translation model of smoke mode cannot take a 2-layer plan: skipped, not mis-built
    assert set(results["translate"]["models"]) == {"vanilla", "floor", "memsizer"}
    rows = {r["kind"]: r for r in results["summary"]}
    assert rows["memsizer"]["constant_state"] and not rows["memsizer,softmax"]["constant_state"]


def test_kinds_takes_plans(capsys):
    from kvattn_fairseq.bench.common import split_kinds

    assert split_kinds("memsizer,linear") == ["memsizer", "linear"]
    assert split_kinds("memsizer*5,softmax") == ["memsizer*5,softmax"]
    assert split_kinds("memsizer; memsizer*5,softmax") == ["memsizer", "memsizer*5,softmax"]
    with pytest.raises(SystemExit):
        main(["--mode", "smoke", "--kinds", "memsizer*5,softmax"])
    assert "--kinds: 'memsizer*5,softmax' fits none of mode smoke's models (2, 1, 1 layers)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["vanilla", "window", "window_memsizer", "memsizer"])
def test_grown_state_is_exactly_what_decoding_holds(kind):
    """The benchmark's shortcut to the state after t tokens has the shapes a real decode of t tokens leaves: a
    window's ring grows to W positions, softmax's cache to t, a memory's does not grow."""
    d = make_dictionary(50)
    size = Size(2, 16, 32, 2, 50)
    model = build_lm(kind, size, d, 128, torch.device("cpu"))
    tokens = torch.randint(d.nspecial, len(d), (3, 80), generator=torch.Generator().manual_seed(0))
    for t in (2, 5, 70):  # the window's default W is 64
        real = {}
        with torch.no_grad():
            for n in range(1, t + 1):
                model.decoder(tokens[:, :n], incremental_state=real)
            grown = decode.grown_state(model, tokens, t)
        shapes = lambda state: sorted((name, tuple(v.shape)) for buf in state.values() for name, v in buf.items()  # noqa: E731
                                      if torch.is_tensor(v))
        assert shapes(grown) == shapes(real), (kind, t)
        # a window's position counter too: the ring's next slot depends on it
        counters = [[v for buf in state.values() for name, v in buf.items() if name.endswith("ring_count")]
                    for state in (grown, real)]
        assert all(torch.equal(a, b) for a, b in zip(*counters))


def test_gpu_mode_skips_a_plan_where_it_does_not_fit(tmp_path, capsys):
    """gpu-dry's LM has 2 layers, its translation and training models 1: a 2-layer plan runs in decoding only."""
    out = tmp_path / "bench"
    assert main(["--mode", "gpu-dry", "--parts", "decode,translate,train", "--out", str(out), "--device", "cpu",
                 "--kinds", "memsizer*2"]) == 0
    log = capsys.readouterr().out
    assert "[translate] memsizer*2: skipped, the plan does not fit this part's 1-layer model" in log
    assert "[train] memsizer*2: skipped" in log
    results = json.loads((out / "results.json").read_text())
    assert all("memsizer*2" in c["models"] for c in results["decode"]["configs"])
    assert all("memsizer*2" not in per for per in results["translate"]["by_dtype"].values())


@pytest.mark.parametrize("argv", [["--parts", "decode"], ["--parts", "decode,translate,train", "--threads", "1"],
                                  ["--parts", "decode", "--threads", "2"]])
def test_cpu_clock_is_refused_where_it_would_mislead(argv, tmp_path, capsys):
    """One thread's CPU time is the step's time only with one torch thread, in this process (training runs in
    subprocesses)."""
    out = tmp_path / "bench"
    with pytest.raises(SystemExit):
        main(["--clock", "cpu", "--device", "cpu", "--out", str(out)] + argv)
    assert "--clock cpu: times one thread on the CPU" in capsys.readouterr().err
    assert not out.exists()


def test_cpu_clock_does_not_count_time_off_the_cpu():
    from kvattn_fairseq.bench import common

    try:
        common.set_clock("cpu")
        start = common.now(torch.device("cpu"))
        time.sleep(0.3)  # as when another process has the core
        assert common.now(torch.device("cpu")) - start < 0.1
    finally:
        common.set_clock("wall")
