"""Fine-tuning under `torchrun` with DistributedDataParallel (DDP).

One process is the default: nothing here runs unless the process was started by torchrun (the
environment holds WORLD_SIZE > 1). Then

    torchrun --nproc_per_node 2 -m compress prune compress:fmnist-cnn --ratio 0.5 \\
        --data fashion-mnist --finetune 1 --distill --out DIR

runs the whole verb on every rank: pruning is deterministic, so every rank builds the same plan
and the same pruned model; `compress.accuracy.train.fit` wraps it in DDP (gloo on CPU, NCCL on GPU: one
GPU per rank, `LOCAL_RANK`), gives each rank its `DistributedSampler` shard with batch_size /
world_size samples per step (the global batch, the number of steps and the LR schedule are those
of one process), and averages the BatchNorm running statistics over the ranks at the end, so all
ranks hold identical weights. Only rank 0 writes the output directory and prints; the other ranks
wait for it at a barrier. Set COMPRESS_DDP_BACKEND=gloo to keep a GPU machine's ranks on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_CTX = None


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str            # gloo | nccl
    device: str             # cpu | cuda:LOCAL_RANK


def requested() -> bool:
    """True in a process started by torchrun with more than one rank."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init() -> DistContext | None:
    """Join the process group torchrun set up (once); None in a plain single process."""
    global _CTX
    if _CTX is not None or not requested():
        return _CTX
    import torch
    import torch.distributed as dist

    from compress.errors import CompressError

    backend = os.environ.get("COMPRESS_DDP_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise CompressError(f"COMPRESS_DDP_BACKEND={backend!r}: use gloo (CPU) or nccl (GPU)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    _CTX = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)
    return _CTX


def active() -> DistContext | None:
    """The current context when running under torchrun (initialised on first use), else None."""
    return init() if requested() else None


def is_main() -> bool:
    """Rank 0, or a single process: the one that writes files and prints."""
    ctx = active()
    return ctx is None or ctx.rank == 0


def barrier() -> None:
    if active() is not None:
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Leave the process group (end of a verb)."""
    global _CTX
    if _CTX is not None:
        import gc

        import torch.distributed as dist

        # a DistributedDataParallel wrapper left in a reference cycle holds the group's gloo work; freed only at
        # interpreter exit, after the group, its threads abort the process ("terminate called without an active
        # exception", seen in 2 of ~30 test runs): free it while the group is alive
        gc.collect()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        _CTX = None


def wrap(model, ctx: DistContext):
    """`model` moved to the rank's device and wrapped in DistributedDataParallel (which broadcasts
    rank 0's parameters and buffers, so every rank starts from the same weights)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model.to(ctx.device)
    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return DDP(model, device_ids=ids)


def shard_batches(ds, batch_size: int, seed: int, ctx: DistContext):
    """This rank's (images, labels) batches of one epoch: a DistributedSampler shard (seeded shuffle,
    padded so every rank takes the same number of steps)."""
    import torch
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(len(ds)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    idx = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        yield ds.images[j], ds.labels[j]


def sync_buffers(model, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks and take rank 0's
    integer buffers (batch counters), so that all ranks end with identical state."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b, op=dist.ReduceOp.SUM)
                b.div_(ctx.world_size)
            else:
                dist.broadcast(b, src=0)
