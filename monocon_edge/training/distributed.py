"""Multi-process training: the torchrun environment, the process group, rank-sharded batches and gathers.

One process per device (``torchrun --nproc_per_node N -m monocon_edge.cli train ...``): nccl on CUDA, gloo on
CPU. Every rank takes a disjoint slice of the same seeded global batches, so the ranks' batches at one step
together are exactly the batch a single process with the global batch size (per-rank batch x world size)
would take. Rank 0 alone writes the run directory, evaluates and reports; the others receive its results.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..device.errors import MonoconError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 evaluates while the others wait in a collective: allow for a long evaluation of a large set.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``enabled`` when a process group is up (even with one rank)."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this context initialised the process group, so it also destroys it

    @property
    def is_main(self) -> bool:
        """Return True on the rank that writes files, evaluates and reports (rank 0)."""
        return self.rank == 0


SINGLE = DistContext()


def env_rank() -> int:
    """Return this process's rank from the torchrun environment (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise MonoconError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """Return True when the torchrun environment (RANK, WORLD_SIZE, ... MASTER_PORT) is set."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """Return the torch device for ``auto`` | ``cpu`` | ``cuda[:i]``; asking for CUDA without one is an error.

    Under distributed training ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MonoconError("--device cuda asked for, but torch sees no CUDA device here")
    if name.startswith("cuda") and distributed:
        if name != "cuda":
            raise MonoconError("under torchrun pass --device cuda (each process takes the GPU of its LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise MonoconError(f"LOCAL_RANK {local_rank} has no GPU: torch sees {torch.cuda.device_count()} here "
                               "(use --nproc_per_node <= the number of GPUs)")
        name = f"cuda:{local_rank}"
    return torch.device(name)


def setup(requested: bool, device_name: str) -> tuple[DistContext, torch.device]:
    """Return the distributed context and this process's device, initialising the process group if needed.

    Distributed training runs when ``requested`` (``--distributed``), when torchrun started more than one
    process, or when the caller already initialised a process group (which it then keeps owning).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = resolve_device(device_name, local, distributed=True)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(True, rank, world, local, owns_group=False), device
    multi = "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1
    if not requested and not multi:
        return SINGLE, resolve_device(device_name)
    if not launched_by_torchrun():
        missing = ", ".join(v for v in TORCHRUN_VARS if v not in os.environ)
        raise MonoconError(f"--distributed needs the torchrun environment ({missing} not set): launch with "
                           "torchrun --nproc_per_node N -m monocon_edge.cli train ...")
    if not dist.is_available():
        raise MonoconError("this torch build has no torch.distributed support")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    device = resolve_device(device_name, local, distributed=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(True, rank, world, local, owns_group=True), device


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Destroy the process group if ``ctx`` created it (after a barrier when all ranks end ``clean``ly)."""
    if ctx.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()  # destroying the group while a peer still has work in flight can abort that peer
        dist.destroy_process_group()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Return rank 0's ``obj`` on every rank (``obj`` itself without distributed training)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (nothing without distributed training)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Return the sum of ``t`` over ranks (no gradient; ``t`` itself without distributed training)."""
    if not ctx.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_others(embeddings: torch.Tensor, labels: torch.Tensor,
                  ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the embeddings and labels of all other ranks, concatenated in rank order.

    The embeddings keep their autograd history: ``torch.distributed.nn.functional.all_gather`` sends the
    gradient each rank's loss puts on a gathered copy back to the rank that computed it (summed), so every
    embedding receives the gradient of the sum of all ranks' losses. All ranks must pass equal shapes.
    """
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Deprecated in favour of a private API (_functional_collectives); this one is public and still works.
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(embeddings)
    label_parts = [torch.empty_like(labels) for _ in range(ctx.world_size)]
    dist.all_gather(label_parts, labels.contiguous())
    others = [i for i in range(ctx.world_size) if i != ctx.rank]
    return torch.cat([parts[i] for i in others]), torch.cat([label_parts[i] for i in others])


def gathered_supcon(loss_fn: Callable[..., torch.Tensor], embeddings: torch.Tensor, labels: torch.Tensor,
                    ctx: DistContext, label_offset: int = 0) -> torch.Tensor:
    """Return this rank's share of the SupCon loss of the global batch (anchors local, candidates global).

    ``loss_fn`` is a SupConLoss or MatryoshkaSupConLoss (each averages over the anchors that have a positive,
    and takes ``ref_embeddings``/``ref_labels`` as extra candidates). ``label_offset`` > 0 marks labels that only identify examples within a
    batch (text pairs 0..B-1): rank r's labels are shifted by r * label_offset so they do not collide.
    The result is scaled so that its mean over ranks -- what DDP's gradient averaging optimises -- equals
    the SupCon loss one process computes on the concatenated global batch, whatever the number of anchors
    with a positive on each rank.
    """
    labels = labels + ctx.rank * label_offset
    ref, ref_labels = gather_others(embeddings, labels, ctx)
    loss = loss_fn(embeddings, labels, ref, ref_labels)
    candidates = torch.cat([labels, ref_labels])
    anchors = ((labels[:, None] == candidates[None, :]).sum(dim=1) > 1).sum().float()
    return loss * (anchors * ctx.world_size / all_reduce_sum(anchors, ctx).clamp(min=1.0))


def shard_batches(global_batches: list[torch.Tensor], rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """Return this rank's part of each global batch: the ``rank``-th of ``world_size`` equal contiguous slices.

    Every rank builds the same global batches (same seed), so the parts are disjoint and together form the
    batches one process takes with the global batch size. Contiguous slices keep the m-per-class groups
    whole when m divides the per-rank batch.
    """
    if world_size == 1:
        return global_batches
    return [b.view(world_size, -1)[rank] for b in global_batches]


def all_reduce_grads_mean(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Replace each parameter's gradient by its mean over ranks (what DDP does), in one flat all-reduce.

    Used for the head-only phases, which run without a DDP wrapper so that the one DDP wrapper of the
    whole model never has to be rebuilt when the encoder starts training.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not ctx.enabled or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
