"""--mgk-pi em, the MGK paper's design B: pi is a buffer that each training forward sets by the EM rule (the mean
responsibility of each component over the batch's real query-key pairs, per head and key position), frozen at
inference, identical on every data-parallel worker, saved and restored with checkpoints."""
import os
import re
import sys

import pytest
import torch
import torch.multiprocessing as mp

import fairseq_runs as runs
from conftest import run, run_cli
from kvattn_fairseq.modules import MGKAttention
from kvattn_fairseq.modules.mgk_attention import MixtureWeights

TABLE = 8


def _module(shifted=False, position="encoder", seed=0):
    torch.manual_seed(seed)
    m = MGKAttention(16, 2, position, components=2, shifted=shifted, pi="em", inv_var=(1.0, 3.0), head_dim=8,
                     pi_positions=TABLE)
    with torch.no_grad():  # a non-uniform starting pi, so that the E-step's weighting by pi is exercised
        m.mixture.em_pi.copy_(torch.softmax(torch.randn(2, TABLE, 2), -1))
    return m


def _batch(seed=1, pad_rows=((1, 2),)):
    """x [T=5, B=2, C=16] and a padding mask [B, T] with the first n positions of the given rows padded (fairseq's
    left-padded sources)."""
    x = torch.randn(5, 2, 16, generator=torch.Generator().manual_seed(seed))
    pad = torch.zeros(2, 5, dtype=torch.bool)
    for row, n in pad_rows:
        pad[row, :n] = True
    return x, pad


def em_rule_by_hand(m: MGKAttention, x, pad):
    """pi[h, p, r] = sum of gamma_ijr over the real (query i, key j) pairs whose key sits at position p, divided by
    their number; gamma_ijr = pi_pr N_r(q_i; k_jr) / sum_r' pi_pr' N_r'(q_i; k_jr'), sigma_r^2 = sqrt(d) / s_r.
    Positions no key had keep their value.  Literal loops, fp64."""
    xb = x.transpose(0, 1)
    with torch.no_grad():
        q = m.heads(m.q_proj, xb).double()
        keys = m.component_keys(m.project_keys(xb)).double()
    old = m.mixture.em_pi.double()
    heads, _, comps = old.shape
    d = q.size(-1)
    num, den = torch.zeros_like(old), torch.zeros(old.size(1), dtype=torch.float64)
    for b in range(x.size(1)):
        real = [t for t in range(x.size(0)) if not pad[b, t]]
        for i in real:
            for p, j in enumerate(real):  # the key's position counts real tokens only
                den[p] += 1
                for h in range(heads):
                    dens = [old[h, p, r] * torch.exp(-m.inv_var[r] * (q[b, h, i] - keys[b, h, j, r]).pow(2).sum()
                                                     / (2 * d ** 0.5)) for r in range(comps)]
                    for r in range(comps):
                        num[h, p, r] += dens[r] / sum(dens)
    new = old.clone()
    seen = den > 0
    new[:, seen] = num[:, seen] / den[seen].view(1, -1, 1)
    return new


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("position", ["encoder", "decoder"])
def test_a_training_forward_applies_the_em_rule(shifted, position):
    m = _module(shifted, position).train()
    x, pad = _batch()
    expected = em_rule_by_hand(m, x, pad)
    old = m.mixture.em_pi.clone()
    reference = _module(shifted, position).eval()  # the same weights and pi, frozen
    out_train, _ = m(x, x, x, key_padding_mask=pad)
    out_frozen, _ = reference(x, x, x, key_padding_mask=pad)
    torch.testing.assert_close(m.mixture.em_pi, expected.float(), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(m.mixture.em_pi, old)
    torch.testing.assert_close(m.mixture.em_pi[:, 5:], old[:, 5:], atol=0, rtol=0)  # positions no key had
    torch.testing.assert_close(m.mixture.em_pi.sum(-1), torch.ones(2, TABLE))
    torch.testing.assert_close(out_train, out_frozen)  # the forward read pi before updating it
    assert not m.mixture.em_pi.requires_grad and "em_pi" not in dict(m.named_parameters())


def test_padding_is_left_out_of_the_averages():
    """What sits at padded positions changes nothing, and a left-padded row updates the table as it would alone."""
    x, pad = _batch()
    garbage = x.clone()
    garbage[:2, 1] = 100.0 * torch.randn(2, 16)
    tables = []
    for inp in (x, garbage):
        m = _module().train()
        m(inp, inp, inp, key_padding_mask=pad)
        tables.append(m.mixture.em_pi)
    torch.testing.assert_close(tables[0], tables[1], atol=0, rtol=0)
    alone, padded = _module().train(), _module().train()
    alone(x[2:, 1:], x[2:, 1:], x[2:, 1:])
    padded(x[:, 1:], x[:, 1:], x[:, 1:], key_padding_mask=pad[1:])
    torch.testing.assert_close(alone.mixture.em_pi, padded.mixture.em_pi)


def test_inference_and_decoding_read_pi_without_moving_it():
    m = _module(position="decoder").eval()
    x, _ = _batch(pad_rows=())
    before = m.mixture.em_pi.clone()
    full, _ = m(x, x, x)
    state = {}
    steps = [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)[0] for t in range(x.size(0))]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)  # the step path uses the stored pi
    m.train()  # a decoding step in training mode (fairseq's --eval-bleu) does not update either
    m(x[:1], x[:1], x[:1], incremental_state={})
    torch.testing.assert_close(m.mixture.em_pi, before, atol=0, rtol=0)
    uniform = _module(position="decoder").eval()
    with torch.no_grad():
        uniform.mixture.em_pi.fill_(0.5)
    assert not torch.allclose(uniform(x, x, x)[0], full)  # the stored pi matters to the output


def test_the_table_stays_fp32_under_half_and_bfloat16():
    w = MixtureWeights(2, 2, "em", positions=4)
    value = torch.tensor(0.1234567)
    with torch.no_grad():
        w.em_pi.copy_(value.expand(2, 4, 2))
    assert value.half().float() != value
    for cast in (torch.nn.Module.half, torch.nn.Module.bfloat16):
        cast(w)
        assert w.em_pi.dtype == torch.float32 and torch.equal(w.em_pi, value.expand(2, 4, 2))


def _gloo_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    m = _module().train()  # same seed: the same weights on both workers, as DDP starts them
    x, pad = _batch(seed=10 + rank, pad_rows=((rank, 1 + rank),))  # each worker its own batch
    m(x, x, x, key_padding_mask=pad)
    torch.save(m.mixture.em_pi, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_workers_take_the_same_em_step_over_the_global_batch(tmp_path):
    # forked like DataLoader workers (one thread each): the workers start with fairseq already imported
    mp.start_processes(_gloo_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    tables = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(tables[0], tables[1], atol=0, rtol=0)
    batches = [_batch(seed=10 + r, pad_rows=((r, 1 + r),)) for r in (0, 1)]
    x = torch.cat([b[0] for b in batches], dim=1)
    pad = torch.cat([b[1] for b in batches], dim=0)
    whole = _module().train()  # one process seeing both workers' batches
    whole(x, x, x, key_padding_mask=pad)
    torch.testing.assert_close(tables[0], whole.mixture.em_pi, atol=1e-6, rtol=1e-5)
    local = []
    for bx, bpad in batches:  # what each worker would hold without the sum over workers
        m = _module().train()
        m(bx, bx, bx, key_padding_mask=bpad)
        local.append(m.mixture.em_pi)
    assert not torch.allclose(local[0], local[1], atol=1e-4)


EM_FLAGS = ("--encoder-attention-type", "smgk", "--decoder-attention-type", "mgk", "--cross-attention-type",
            "softmax", "--mgk-pi", "em", "--mgk-pi-positions", "64", "--max-source-positions", "64",
            "--max-target-positions", "64", "--dropout", "0")


def _train_argv(data, save_dir, epochs):
    return [str(a) for a in (data, "--arch", "mgk_tiny", "--save-dir", save_dir, "--max-epoch", epochs, "--lr", "1e-2",
                             *runs.TRAIN_FLAGS, *EM_FLAGS)]


def _tables(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    return {k: v for k, v in state.items() if k.endswith("mixture.em_pi")}


def _resume_in_process(argv):
    """fairseq-train's own start (fairseq_cli/train.py): parse, build task, model, criterion and trainer, then
    checkpoint_utils.load_checkpoint; returns the model as training would continue with it."""
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    return model


@pytest.mark.slow
def test_em_trains_on_two_workers_decodes_and_resumes_through_the_cli(tmp_path):
    """Epoch 1 with torchrun, 2 CPU workers and fairseq's default DistributedDataParallel backend (the sum over
    workers inside each training forward fits between DDP's own collectives), fairseq-generate from its checkpoint,
    then a single process resumes epoch 2 from it."""
    data = runs.prepare_reverse(tmp_path, train=300, valid=40, test=30)
    save = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                "29519", "-m", "fairseq_cli.train", *_train_argv(data, save, 1),
                "--distributed-world-size", "2", "--distributed-backend", "gloo"],
               env=env, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "distributed init (rank 1)" in log and "MixtureWeights(mode=em" in log
    first = _tables(save / "checkpoint_last.pt")
    assert len(first) == 4  # 2 encoder + 2 decoder self-attention layers
    for table in first.values():  # trained: no longer the 1/M it started from
        assert table.dtype == torch.float32 and not torch.allclose(table[:, :8], torch.full_like(table[:, :8], 0.5))
    hyps = runs.generate(data, save / "checkpoint_last.pt")
    assert len(hyps) == 30

    # the rerun with --max-epoch 2 continues from checkpoint_last.pt: first what fairseq-train does when it starts,
    # in this process, then the real command
    state = _resume_in_process(_train_argv(data, save, 2)).state_dict()
    for name, table in first.items():
        torch.testing.assert_close(state[name], table, atol=0, rtol=0)
    proc = run_cli("fairseq-train", *_train_argv(data, save, 2))
    log = proc.stdout + proc.stderr
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ [1-9]\d* updates\)", log)
    assert re.search(r"train \| epoch 002", log) and not re.search(r"train \| epoch 001", log)
    for name, table in _tables(save / "checkpoint_last.pt").items():  # epoch 2 moved the restored table
        assert table.dtype == torch.float32 and not torch.allclose(table, first[name])
