"""Several processes (torchrun / `accelerate launch` / `ownllm train --num-processes N`): data-parallel
training on accelerate's engines (DDP with gloo on CPUs or NCCL on GPUs, FSDP, DeepSpeed through
`--deepspeed`). Only the main process writes the run directory; the others read what it wrote."""
from __future__ import annotations

import contextlib
import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def state():
    """accelerate's process state (it starts the process group: gloo on CPUs, NCCL on GPUs)."""
    from accelerate import PartialState

    return PartialState()


def is_main() -> bool:
    return not is_distributed() or state().is_main_process


def barrier() -> None:
    if is_distributed():
        state().wait_for_everyone()


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (it may write caches); the others follow."""
    if not is_distributed():
        yield
        return
    with state().main_process_first():
        yield


def sum_over_processes(value: int) -> int:
    if not is_distributed():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=state().device)
    dist.all_reduce(t)
    return int(t.item())


def launch(argv: list[str], num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           main_process_ip: str | None = None, main_process_port: int = 29500) -> int:
    """Re-run ``ownllm <argv>`` under torchrun with ``num_processes`` per machine; returns its exit code."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={num_processes}",
           f"--nnodes={num_machines}", f"--node-rank={machine_rank}",
           f"--master-addr={main_process_ip or '127.0.0.1'}", f"--master-port={main_process_port}",
           "-m", "ownllm"] + argv
    return subprocess.call(cmd)
