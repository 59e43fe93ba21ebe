"""torch.distributed set-up for ``torchrun`` (nothing happens at import; no home-made launcher).

``torchrun --nproc_per_node=N -m marginface.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*;
:func:`init_from_env` joins that group (gloo on CPU, NCCL on GPU). A plain ``python`` run is world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown(*, wait_for_peers: bool = True) -> None:
    """Leave the process group. On a normal exit all ranks meet at a barrier first, so no rank tears down its gloo
    connections while a peer still reads from them (that peer then aborts with "terminate called without an active
    exception"); after an error, ``wait_for_peers=False`` leaves at once instead of waiting for ranks that may be gone.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of a per-rank scalar (e.g. the local loss) over all ranks, for logging."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / info.world_size
