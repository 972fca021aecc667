"""Machine facts, synchronised timing, and the models the benchmark compares."""
import os
import platform
import time
from dataclasses import dataclass
from typing import Dict, List

import torch

from ..building import build_model
from ..modules.registry import ATTENTION_KINDS
from .floor import FLOOR, strip_attention

VANILLA = "vanilla"  # fairseq's own transformer_lm / transformer
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BenchmarkError(RuntimeError):
    pass


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


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def decoder_kinds(only: List[str] = None) -> List[str]:
    """Every registered kind that can be a decoder's self-attention (new kinds show up without code changes)."""
    kinds = sorted(k for k, v in ATTENTION_KINDS.items() if "decoder" in v.positions)
    return [k for k in kinds if not only or k in only]


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
    """Encoder-decoder of `size`: softmax encoder; `kind` in decoder self-attention and, where it can sit there,
    cross-attention (softmax otherwise)."""
    flags = size.flags("encoder") + size.flags("decoder") + ["--share-all-embeddings"]
    if kind in (VANILLA, FLOOR):
        model = build_model("transformer", *flags, dictionary=dictionary)
        if kind == FLOOR:
            strip_attention(model)
    else:
        cross = kind if "cross" in ATTENTION_KINDS[kind].positions else "softmax"
        model = build_model("kvattn_transformer", *flags, "--decoder-attention-type", kind, "--cross-attention-type",
                            cross, dictionary=dictionary)
    return model.to(device).eval()


def state_bytes(incremental_state) -> int:
    return sum(t.numel() * t.element_size() for buf in incremental_state.values() for t in buf.values()
               if torch.is_tensor(t))
