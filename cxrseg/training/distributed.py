"""torchrun / DistributedDataParallel plumbing: process group, rank checks, reductions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (world_size 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_torchrun(env: Mapping[str, str]) -> Distributed:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK from `env` (the CLI passes os.environ)."""
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    return Distributed(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


def setup(ctx: Distributed, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(ctx: Distributed) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: Distributed, device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity when alone)."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value: Any, ctx: Distributed) -> Any:
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, ctx: Distributed) -> list[Any]:
    if not ctx.enabled:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def sync_buffers(model: torch.nn.Module, ctx: Distributed) -> None:
    """Give every rank rank 0's batch-norm statistics, so validation matches the saved checkpoint."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
