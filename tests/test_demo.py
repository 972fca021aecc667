"""The demo's state column: what one hypothesis holds after t output tokens, measured with fairseq's incremental
decoder (the demo itself trains for minutes and is not run here)."""
import torch

from conftest import build_model as build
from kvattn_fairseq import demo

SIZE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings"]


def test_the_window_decoder_state_stops_growing_and_vanillas_grows_by_one_key_and_value_per_token():
    torch.manual_seed(0)
    src = torch.randint(4, 20, (1, 7))
    vanilla = build("transformer", *SIZE)
    window = build("kvattn_transformer", *SIZE, *demo.MODELS["window"][1][2:])
    v = demo.decoding_state(vanilla, src, eos=2, steps=(16, 40))
    w = demo.decoding_state(window, src, eos=2, steps=(16, 40))
    # fp32 keys and values of 16 wide, 2 decoder layers: 128 B per layer and token
    assert v[40] - v[16] == 24 * 2 * 128
    assert w[40] == w[16] < v[16]
    # both keep the source's keys and values for softmax cross-attention: 7 tokens, 2 layers
    cross = 7 * 2 * 128
    assert w[16] >= cross + 2 * (int(demo.WINDOW) - 1) * 128
