"""The checkpoint an evaluation scores: given, or averaged from the last N of a directory; and the model settings
read from it for the results file (architecture, attention kind per position, heads, parameters, updates)."""
import os
from typing import Dict, List, Optional, Tuple

from ..checkpoints import config
from ..models import FAIRSEQ_COUNTERPARTS, attention_positions, model_of
from ..modules.registry import POSITIONS
from ..util.errors import OneLineError
from .inputs import require_dir, require_file


def model_info(state: dict, path: str) -> Dict:
    """Architecture, attention kind per position, heads, parameter count and updates, from a loaded checkpoint."""
    import torch

    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise OneLineError(f"--checkpoint {path}: not a fairseq checkpoint (no 'model' state dict)")
    section = config.section(state, "model")

    def get(key):
        return config.value(section, key)

    arch = config.arch(section)
    model_name = model_of(arch)
    fairseq_own = model_name in FAIRSEQ_COUNTERPARTS  # every attention is fairseq's MultiheadAttention (softmax)
    attention = {}
    for pos in attention_positions(model_name, fairseq_models=True) or POSITIONS:
        kind = get(f"{pos}_attention_type")
        if kind is None and fairseq_own:
            kind = "softmax"
        if pos == "cross" and get("no_cross_attention"):
            kind = None
        if kind is not None:
            attention[pos] = kind
    heads = {p: get(f"{p}_attention_heads") for p in ("encoder", "decoder") if get(f"{p}_attention_heads")}
    options = {}
    if attention and attention_positions(model_name):  # the options of the kinds the model uses, as trained
        from ..modules.registry import ATTENTION_KINDS

        kinds = [ATTENTION_KINDS[k] for k in sorted(set(attention.values())) if k in ATTENTION_KINDS]
        for opt in (o for kind in kinds for o in kind.options):
            value = get(opt.dest)
            if value is not None:
                options[opt.dest] = list(value) if isinstance(value, tuple) else value
    seen, params = set(), 0
    for key, value in state["model"].items():
        if not torch.is_tensor(value) or not value.is_floating_point() or key.endswith("_float_tensor") \
                or key.endswith(".version"):
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident not in seen:  # shared embeddings are stored once
            seen.add(ident)
            params += value.numel()
    history = state.get("optimizer_history") or [{}]
    info = {"arch": arch, "model": model_name, "attention": attention, "heads": heads, "options": options,
            "parameters": params,
            "num_updates": history[-1].get("num_updates") if isinstance(history[-1], dict) else None}
    mtp = get("max_target_positions")
    if mtp is None and model_name in ("kvattn_lm", "transformer_lm"):
        mtp = config.value(config.section(state, "task"), "tokens_per_sample")
    info["max_target_positions"] = mtp
    return info


def checkpoint_info(path: str) -> Tuple[Dict, Optional[List[str]]]:
    """(model info, the files it was averaged from or None) for the checkpoint at `path`."""
    from ..checkpoints.average import load_checkpoint

    require_file(path, "--checkpoint")
    state = load_checkpoint(path, "--checkpoint", require_model=False)
    info = model_info(state, path)
    averaged = state.get("kvattn_averaged_from")
    return info, [os.path.basename(p) for p in averaged] if averaged else None  # results name files, not paths


def average_last(checkpoint_dir: str, n: int, by: str, output: Optional[str]) -> Tuple[str, List[str]]:
    """Average the last `n` epoch/update checkpoints of `checkpoint_dir` (checkpoints/average.py)."""
    from ..checkpoints import average as avg
    from ..util.io import check_output_file

    require_dir(checkpoint_dir, "--checkpoint-dir")
    paths = avg.last_checkpoints(checkpoint_dir, n, by)
    output = output or os.path.join(checkpoint_dir, f"checkpoint.avg{n}.pt")
    check_output_file(output, "--average-output", [("--checkpoint-dir", p) for p in paths])
    avg.save_atomic(avg.average(paths), output)
    return output, [os.path.basename(p) for p in paths]


def resolve_checkpoint(a) -> Tuple[str, Optional[List[str]]]:
    """--checkpoint, or the average of the last --average-last checkpoints of --checkpoint-dir (written to
    --average-output, default CHECKPOINT_DIR/checkpoint.avgN.pt)."""
    if a.average_last:
        if not a.checkpoint_dir:
            raise OneLineError("--average-last: needs --checkpoint-dir")
        return average_last(a.checkpoint_dir, a.average_last, a.average_by, a.average_output)
    if not a.checkpoint:
        raise OneLineError("--checkpoint: required (or --average-last N with --checkpoint-dir)")
    require_file(a.checkpoint, "--checkpoint")
    return a.checkpoint, None
