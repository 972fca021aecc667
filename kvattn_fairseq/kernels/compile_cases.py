"""What the compile check compiles (compile_check.py) and for which targets, apart from how: the report
(compile_report.py) reads these too, and neither imports the other's module at its top."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(".cache/kernel-compile")  # triton's compiled binaries, and each one's resource usage


@dataclass(frozen=True)
class Target:
    name: str
    capability: int
    gpu: str  # what torch.cuda.get_device_name says there (fla tells Hopper by it)
    shared: int  # bytes of shared memory one block may use (the opt-in maximum)
    sms: int


TARGETS = {t.name: t for t in (Target("sm_90", 90, "NVIDIA H100 80GB HBM3", 232448, 132),
                               Target("sm_80", 80, "NVIDIA A100-SXM4-80GB", 166912, 108))}
HALF = ("fp16", "bf16")  # what GPU models train and decode in (fairseq's --fp16 / --bf16, the benchmark's GPU mode)
# fp32 too (fairseq's default without those flags) at the benchmark's size only: the same kernels at other sizes
# differ from the half-precision ones by the tile sizes alone, and each fla size costs hundreds of compiles


# --- what is compiled ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """A kind at one size: `options` over the kind's defaults; `used` says which architecture or setting has it."""
    kind: str
    embed_dim: int
    heads: int
    used: str
    options: tuple = ()

    @property
    def name(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.kind} {self.embed_dim}/{self.heads}{extra}"


SITES = (
    Site("linear", 512, 8, "linear_base, the benchmark (d_h 64)"),
    Site("linear", 1024, 8, "d_h 128 (the WikiText-103 width, 8 heads)"),
    Site("mlk", 128, 8, "mgk_lm_wiki103_mlk8 (d_h 16)", (("mgk_head_dim", 16),)),
    Site("memsizer", 512, 8, "memsizer_wmt_en_de, the benchmark (k 4, d 512)"),
    Site("memsizer", 1024, 16, "memsizer_wmt_en_de_big (k 4, d 1024)"),
    Site("memsizer", 1024, 8, "memsizer_lm_wiki103 (k 32, d 1024)", (("memsizer_self_slots", 32),)),
    Site("delta", 512, 8, "the benchmark (d_h 64)"),
    Site("delta", 1024, 8, "d_h 128"),
    Site("window", 512, 8, "the benchmark, --attention-window 64 (d_h 64)"),
    Site("window", 1024, 8, "d_h 128, W 64"),
    Site("window", 512, 8, "a long window, W 512 (W * d_h = 32K)", (("attention_window", 512),)),
    Site("window", 1024, 8, "a long window at d_h 128 (W * d_h = 64K)", (("attention_window", 512),)),
    Site("gated_delta", 512, 8, "the benchmark (d_h 64)"),
    Site("gated_delta", 1024, 8, "d_h 128"),
)
BENCH_SIZE = (512, 8)  # every other kind with a constant decoding state, at the benchmark's size
TRAIN_T, PROMPT = 128, 3


def sites() -> List[Site]:
    from ..modules.registry import ATTENTION_KINDS

    listed = {s.kind for s in SITES}
    extra = [Site(k, *BENCH_SIZE, "the benchmark's size") for k, v in sorted(ATTENTION_KINDS.items())
             if "decoder" in v.positions and v.constant_state and k not in listed]
    return list(SITES) + extra


def dtypes(site: Site):
    at_bench = (site.embed_dim, site.heads) == BENCH_SIZE and not site.options
    return ("fp32",) + HALF if at_bench else HALF


def site_dtypes() -> List[Tuple[str, Site, str]]:
    """(case name, site, dtype) of every case: each site in each of its dtypes."""
    return [(f"{s.name} {dt}", s, dt) for s in sites() for dt in dtypes(s)]
