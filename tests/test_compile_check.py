"""The compile check (kvattn_fairseq/kernels/compile_check.py): the GPU kernels compiled for the H100 and the A100 on
this CPU machine.  The full compile takes over an hour without its cache, so the suite checks that the committed report
(docs/bench/gpu/compile.md) was made from the current kernel sources, cases, targets and versions, that what it says
holds (every case compiles and fits on both targets, no plugin kernel spills; fla's spills are reported, not
asserted: its tile choices are not the plugin's), and compiles a representative part cold, which must give the
report's numbers exactly; and that the check catches what Triton's interpreter lets through.  KVATTN_COMPILE_ALL=1
also recompiles everything against the report (over an hour cold, minutes with .cache/kernel-compile)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="the gpu extra (triton) is not installed")
pytest.importorskip("fla", reason="the gpu extra (fla-core) is not installed")

from kvattn_fairseq.kernels import compile_check, compile_report  # noqa: E402

# the plugin's step, delta-step and ring kernels, and fla's chunked linear attention and delta rule (forward and
# backward, the first autotune configuration of each), at the benchmark's size in fp16
SUBSET = r"^(linear|delta|window) 512/8 fp16$"
ROOT = compile_check.ROOT


def test_the_committed_report_is_current():
    assert compile_report.stale() is None


def test_every_case_compiles_and_fits_on_both_targets_and_no_plugin_kernel_spills():
    data = compile_report.committed()
    assert data["failures"] == []
    assert {r["target"] for r in data["plugin"]} == {r["target"] for r in data["fla"]} == set(compile_check.TARGETS)
    assert [r for r in data["plugin"] if r["spill_stores"] or r["stack"] or r["status"] != "ok"] == []


def _compiled_as_reported(only, first_config):
    data = compile_report.committed()
    results = compile_check.compile_all(list(compile_check.TARGETS), only=only, first_config=first_config,
                                        log=lambda _: 0)
    fresh = compile_report.summarise(results)
    assert fresh["failures"] == []
    # a row is one binary; the same configuration in another dtype is another binary, told apart by its cases
    committed = {(r["target"], r["kernel"], r["config"], c): r for r in data["plugin"] for c in r["cases"]}
    for r in fresh["plugin"]:
        for case in r["cases"]:
            want = committed[(r["target"], r["kernel"], r["config"], case)]
            assert {k: r[k] for k in compile_report.USAGE} == {k: want[k] for k in compile_report.USAGE}, (r, case)
    rows = {(r["target"], r["kernel"], c, r["dims"], r["types"]): r for r in data["fla"] for c in r["cases"]}
    for r in fresh["fla"]:
        for case in r["cases"]:
            want = rows[(r["target"], r["kernel"], case, r["dims"], r["types"])]
            assert r["first"] == want["first"], (r["kernel"], case)
            if not first_config:
                assert {k: r[k] for k in ("configs", "skipped", "regs", "shared", "spill_free")} == \
                    {k: want[k] for k in ("configs", "skipped", "regs", "shared", "spill_free")}, (r["kernel"], case)
    return fresh


def test_a_representative_subset_compiles_cold_for_both_targets_to_the_reports_numbers():
    fresh = _compiled_as_reported(SUBSET, first_config=True)
    assert {"_step_kernel", "_delta_kernel", "_ring_kernel"} <= {r["kernel"] for r in fresh["plugin"]}
    assert {"chunk_fwd_kernel_o", "chunk_bwd_kernel_dqkwg"} <= {r["kernel"] for r in fresh["fla"]}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KVATTN_COMPILE_ALL") != "1", reason="KVATTN_COMPILE_ALL=1 recompiles everything")
def test_everything_compiles_to_the_reports_numbers():
    fresh = _compiled_as_reported(None, first_config=False)
    data = compile_report.committed()
    assert len(fresh["plugin"]) == len(data["plugin"]) and len(fresh["fla"]) == len(data["fla"])


PROBE = textwrap.dedent("""
    import sys
    import torch
    import triton
    import triton.language as tl
    from kvattn_fairseq.kernels import compile_check as cc

    target = cc.TARGETS[sys.argv[1]]
    cc.install(target)
    recorder = cc.Recorder(target)
    recorder.install()

    @triton.jit
    def tiny_dot(x, y, B: tl.constexpr):  # tl.dot on an 8 x 8 tile: the interpreter computes it
        o = tl.arange(0, B)
        a = tl.load(x + o[:, None] * B + o[None, :])
        tl.store(y + o[:, None] * B + o[None, :], tl.dot(a, a))

    @triton.jit
    def staged_dot(x, y, K, B: tl.constexpr):  # a product keeping several 128 x 128 fp16 tiles in flight
        o = tl.arange(0, B)
        acc = tl.zeros([B, B], dtype=tl.float32)
        for k in range(0, K, B):
            a = tl.load(x + o[:, None] * K + k + o[None, :])
            b = tl.load(x + (k + o[:, None]) * B + o[None, :])
            acc = tl.dot(a, b, acc)
        tl.store(y + o[:, None] * B + o[None, :], acc)

    x, y = torch.randn(1024 * 128).half(), torch.empty(128 * 128)
    launches = (("tiny", lambda: tiny_dot[(1,)](x, y, B=8)),
                ("wide", lambda: staged_dot[(1,)](x, y, 1024, B=128, num_warps=8, num_stages=6)),
                ("fits", lambda: tiny_dot[(1,)](x, y, B=16)))
    for name, launch in launches:
        why = recorder.run_case(cc.Case(name, launch))
        print(name, "|", why, "|", recorder.records[-1]["status"], "|", recorder.records[-1].get("shared"))
""")


def test_the_check_fails_on_what_the_interpreter_runs_and_on_shared_memory_over_the_limit(tmp_path):
    """tl.dot on an 8 x 8 tile runs in Triton's interpreter and fails to compile; a block asking for more than the
    A100's 166,912 B of shared memory fails as its launch would; a 16 x 16 tile compiles."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(ROOT / compile_check.CACHE / "triton"))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, str(script), "sm_80"], capture_output=True, text=True, env=env,
                         timeout=900, check=True).stdout
    lines = {line.split(" | ")[0]: line.split(" | ")[1:] for line in out.splitlines() if " | " in line}
    assert "K >= 16" in lines["tiny"][0] and lines["tiny"][1].startswith("compile error")
    assert lines["wide"][0].startswith("OutOfResources") and lines["wide"][1] == "over the shared memory limit"
    assert int(lines["wide"][2]) > compile_check.TARGETS["sm_80"].shared
    assert lines["fits"][:2] == ["None", "ok"]
