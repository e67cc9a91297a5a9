"""torchrun environment and rank helpers. One process without torchrun is world size 1, rank 0.

Every helper is a no-op (or the identity) in one process, so the training loop reads the same either way.
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (and TORCHELASTIC_RESTART_COUNT after a restart);
``init`` joins the process group they describe: NCCL on GPUs, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class LaunchError(UserError):
    """torchrun's variables set by hand, or left over in a shell, that describe no process group."""


_TORCHRUN = "launch with torchrun (torchrun --nproc-per-node N -m resnet_repro train ...), or unset WORLD_SIZE"


def _env_whole(name: str, default: int | None = None) -> int:
    text = os.environ.get(name, "")
    if not text:
        if default is None:
            raise LaunchError(f"{name} is not set, but WORLD_SIZE={os.environ.get('WORLD_SIZE')}: {_TORCHRUN}")
        return default
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not a whole number: {_TORCHRUN}") from None


def launch_env() -> DistEnv:
    """This process's place in the group torchrun describes, checked: a rank outside 0..WORLD_SIZE-1 would wait
    30 minutes (gloo's timeout) for peers that never come, and a missing MASTER_ADDR ends in torch's traceback."""
    world = _env_whole("WORLD_SIZE", 1)
    if world < 1:
        raise LaunchError(f"WORLD_SIZE={world}: the number of processes is 1 or more; {_TORCHRUN}")
    if world == 1:
        return DistEnv()
    env = DistEnv(_env_whole("RANK"), world, _env_whole("LOCAL_RANK", 0))
    if not 0 <= env.rank < world:
        raise LaunchError(f"RANK={env.rank} with WORLD_SIZE={world}: ranks run from 0 to {world - 1}; {_TORCHRUN}")
    if env.local_rank < 0:
        raise LaunchError(f"LOCAL_RANK={env.local_rank}: a local rank is 0 or more; {_TORCHRUN}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise LaunchError(f"{name} is not set, but WORLD_SIZE={world}: the processes meet there; {_TORCHRUN}")
    return env


def init(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a no-op without torchrun."""
    env = launch_env()
    if env.world == 1:
        return env
    if not dist.is_initialized():
        # torch._dynamo, which DDP imports on first use, keeps the default process group alive when it is
        # first imported after the group exists (torch 2.13). destroy_process_group then leaves gloo's worker
        # threads running, and one that retires its last work while the interpreter shuts down aborts the
        # process ("terminate called without an active exception", the mechanism of pytorch/pytorch#179291; 6 of
        # ~210 two-node launches on the 2-core sandbox). Imported before the group exists, it holds nothing;
        # tests/test_distributed.py checks that no gloo thread outlives train().
        import torch._dynamo  # noqa: F401

        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)  # before NCCL starts, so each rank's communicator uses its GPU
        backend = "nccl" if device_kind == "cuda" else "gloo"
        store = _attempt_store(env)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world)
    return env


def _attempt_store(env: DistEnv):
    """The rendezvous store, scoped to this torchrun attempt where that scope is known to be the same on every rank.

    torchrun (torch >= 2.5) keeps one TCPStore in its agent for the whole job and hands it to every attempt
    unprefixed, so after a restart a rank can read a peer's gloo address or NCCL id left by the attempt before
    and connect to a dead port ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712, seen
    here in 1 of 3 restarted two-rank runs on a loaded 2-core machine). On one node TORCHELASTIC_RESTART_COUNT
    comes from the one agent, so it names the attempt consistently on every rank; across nodes each agent counts
    only its own failures, so there the count cannot be the scope: launch multi-node restarts with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment (a fresh store per attempt; the SLURM script
    does). None: plain init_process_group.
    """
    if int(os.environ.get("LOCAL_WORLD_SIZE", "0")) != env.world:
        return None
    from datetime import timedelta

    timeout = timedelta(minutes=10)  # NCCL's default; gloo's is 30
    store, _, _ = next(dist.rendezvous("env://", rank=env.rank, world_size=env.world, timeout=timeout))
    return dist.PrefixStore(f"resnet_repro/attempt_{restart_count()}", store)


def restart_count() -> int:
    """How many times torchrun has restarted the worker group (0 on the first attempt or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_available_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum across ranks in place (a no-op in one process). Counts travel as float64 to stay exact."""
    if is_available_and_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_available_and_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; CPU tensors inside are fine)."""
    if not is_available_and_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not is_available_and_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank `src`'s buffers (BN running statistics).

    DDP copies rank 0's buffers to all ranks before each training forward, after which every rank updates
    its own from its own batch, so after the last step they differ slightly. Evaluation and checkpoints use
    rank 0's, the ones the checkpoint stores, so the result does not depend on the number of ranks.
    """
    if not is_available_and_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)
