"""fairseq's argparse path turns --bf16 into --tpu (a 2020 TPU-era shortcut), which sends CPU and CUDA runs to
torch_xla and crashes.  Without torch_xla there is no TPU to mean, so keep bf16 on the real device."""
import functools
import importlib.util


@functools.lru_cache(maxsize=None)
def _has_torch_xla() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def without_tpu(call_main):
    """A layer of fairseq.distributed.utils.call_main."""
    def fixed(cfg, main, **kwargs):
        common = getattr(cfg, "common", None)
        if common is not None and getattr(common, "bf16", False) and getattr(common, "tpu", False) \
                and not _has_torch_xla():
            from omegaconf import open_dict

            with open_dict(cfg):
                common.tpu = False
        return call_main(cfg, main, **kwargs)

    return fixed
