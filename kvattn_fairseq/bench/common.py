"""Machine facts, synchronised timing, and the models the benchmark compares."""
import os
import platform
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..models.building import build_model
from ..modules.plan import compact, parse_plan
from ..modules.registry import ATTENTION_KINDS, AttentionConfigError
from ..util.errors import OneLineError
from .floor import FLOOR, strip_attention

VANILLA = "vanilla"  # fairseq's own transformer_lm / transformer
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BenchmarkError(OneLineError, RuntimeError):
    """A measurement that cannot be trusted (decoding that is not incremental, sentences that did not come back)."""


@dataclass(frozen=True)
class Size:
    layers: int
    dim: int
    ffn: int
    heads: int
    vocab: int

    def flags(self, prefix: str = "decoder"):
        return [f"--{prefix}-layers", str(self.layers), f"--{prefix}-embed-dim", str(self.dim),
                f"--{prefix}-ffn-embed-dim", str(self.ffn), f"--{prefix}-attention-heads", str(self.heads)]


def machine(device: torch.device) -> Dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


# wall: time.perf_counter; cpu: this thread's CPU time (time.thread_time), which a shared machine's other processes
# do not add to (set by `--clock cpu`, for one torch thread on the CPU only)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = {"now": time.perf_counter}


def set_clock(name: str) -> None:
    _clock["now"] = CLOCKS[name]


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _clock["now"]()


def decoder_kinds(only: List[str] = None) -> List[str]:
    """Every registered kind that can be a decoder's self-attention (new kinds show up without code changes), or
    those of `only`; per-layer plans in `only` follow the kinds, in their given order."""
    kinds = sorted(k for k, v in ATTENTION_KINDS.items() if "decoder" in v.positions)
    plans = [k for k in only or [] if k not in ATTENTION_KINDS]
    return [k for k in kinds if not only or k in only] + plans


def split_kinds(text: str) -> List[str]:
    """--kinds: 'memsizer,linear' (kinds), 'memsizer*5,softmax' (one plan) or 'memsizer;memsizer*5,softmax'
    (entries separated by ';' once any of them is a plan written with commas)."""
    if ";" in text:
        return [k.strip() for k in text.split(";") if k.strip()]
    if "*" in text:
        return [text.strip()]
    return [k.strip() for k in text.split(",") if k.strip()]


def layer_kinds(kind: str, layers: int) -> List[str]:
    """The decoder self-attention kind of each of `layers` layers (AttentionConfigError if the plan does not fit)."""
    return list(parse_plan("decoder", kind, layers)[0])


def constant_state(kind: str) -> bool:
    """A kind or a plan whose every layer keeps a constant-size decoding state."""
    kinds = [k.partition("*")[0].strip() for k in kind.split(",")]
    return all(ATTENTION_KINDS[k].constant_state for k in kinds)


def fits(kind: str, size: Size) -> Optional[str]:
    """None when `kind` can be built at `size`, else why not (a plan made for another number of layers)."""
    try:
        layer_kinds(kind, size.layers)
    except AttentionConfigError as e:
        return str(e)
    return None


def skipped(kind: str, size: Size, part: str, log) -> bool:
    """True (with a line in the log) when `kind` is a plan for another number of layers than this part's model."""
    why = None if kind in (VANILLA, FLOOR) else fits(kind, size)
    if why:
        log(f"[{part}] {kind}: skipped, the plan does not fit this part's {size.layers}-layer model")
    return bool(why)


def build_lm(kind: str, size: Size, dictionary, max_positions: int, device: torch.device):
    """fairseq's transformer_lm (vanilla, and with its attention removed: the floor) or kvattn_lm with `kind`."""
    if kind in (VANILLA, FLOOR):
        model = build_model("transformer_lm", *size.flags(), dictionary=dictionary,
                            max_target_positions=max_positions)
        if kind == FLOOR:
            strip_attention(model)
    else:
        model = build_model("kvattn_lm", *size.flags(), "--decoder-attention-type", kind, dictionary=dictionary,
                            max_target_positions=max_positions)
    return model.to(device).eval()


def build_translation(kind: str, size: Size, dictionary, device: torch.device):
    """Encoder-decoder of `size`: softmax encoder; `kind` (or a plan) in decoder self-attention and, in each layer
    whose kind can sit there, cross-attention (softmax otherwise)."""
    flags = size.flags("encoder") + size.flags("decoder") + ["--share-all-embeddings"]
    if kind in (VANILLA, FLOOR):
        model = build_model("transformer", *flags, dictionary=dictionary)
        if kind == FLOOR:
            strip_attention(model)
    else:
        cross = compact(k if "cross" in ATTENTION_KINDS[k].positions else "softmax"
                        for k in layer_kinds(kind, size.layers))
        model = build_model("kvattn_transformer", *flags, "--decoder-attention-type", kind, "--cross-attention-type",
                            cross, dictionary=dictionary)
    return model.to(device).eval()


def state_bytes(incremental_state) -> int:
    return sum(t.numel() * t.element_size() for buf in incremental_state.values() for t in buf.values()
               if torch.is_tensor(t))
