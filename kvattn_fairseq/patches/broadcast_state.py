"""Resuming or finetuning with several data-parallel workers (torchrun, or fairseq's own spawn on GPUs): fairseq's
trainer reads the checkpoint on rank 0 only and sends the loaded state to the other ranks with
`distributed_utils.broadcast_object`, whose receiving side unpickles it with `torch.load`.  Since torch 2.6 that is a
weights-only load, and the state by then holds the omegaconf config fairseq built after loading, so every rank but 0
died (`UnpicklingError ... omegaconf.dictconfig.DictConfig`).

The bytes a worker receives are rank 0's own pickle of a state it has already read through the checked loader
(checkpoint_globals.py allow-lists, unsafe_checkpoints.py refuses the rest), sent inside the job's own process group:
what a checkpoint file may contain is decided there, once.  The receiving side therefore unpickles the broadcast in
full; rank 0 sends exactly as fairseq does."""
import io

import torch


def full_unpickle_on_receivers(slow):
    """fairseq.distributed.utils._broadcast_object_slow (the object half of broadcast_object)"""
    def broadcast_object_slow(obj, src_rank, group, dist_device):
        from fairseq.distributed import utils

        if utils.get_rank(group) == src_rank:
            return slow(obj, src_rank, group, dist_device)
        # the receiving half of fairseq's function, with the load made explicit
        length = torch.LongTensor([0]).to(dist_device)
        utils.broadcast(length, src=src_rank, group=group)
        buffer = torch.ByteTensor(int(length.item())).to(dist_device)
        utils.broadcast(buffer, src=src_rank, group=group)
        return torch.load(io.BytesIO(buffer.cpu().numpy()), map_location="cpu", weights_only=False)

    return broadcast_object_slow
