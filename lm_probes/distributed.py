"""Several processes (or mixed precision) through accelerate: the one place that knows about them.

    accelerate launch --cpu --num_processes 2 -m rmgap train --train-set ultrafeedback/train ...
    accelerate launch --config_file rmgap/accelerate_configs/ddp.yaml -m rmgap persona --preset paper
    rmgap train ... --mixed-precision bf16          # one process, bf16 autocast, fp32 master weights

``Runtime.from_env()`` gives the run's runtime: a plain single process (no accelerate state touched,
numbers bitwise as before) unless the command was started by ``accelerate launch`` with more than one
process or mixed precision was asked for; then an ``accelerate.Accelerator`` (DDP over gloo on CPUs,
NCCL on GPUs; FSDP2 from the launch config). What lm_probes.rm.trainer does with it:

- the model is wrapped by ``prepare`` (DDP averages gradients over processes, so each process scales
  its loss by the world size: the summed gradient of one process over the same pairs results);
- a step's micro-batches go round-robin to the processes (``shard``), a process with none in a step
  takes part with a zero-weighted one; the effective batch is ``batch_size`` pairs whatever the count;
- reference log-probs and evaluation rewards are computed on shards and gathered (``merge``), so every
  process holds all of them, in the same order as one process would;
- files (checkpoints, outputs) are written by the main process only (``is_main``), and a checkpoint
  holds the unwrapped model, so it resumes under any process count.

Fully sharded back ends (FSDP2; ``lockstep``): a forward pass gathers each layer's parameters from
every process, so every process makes the same passes: a process's share of a step or of the
evaluation is padded with zero-weighted repeats (``share``), evaluation goes through the reward
model's forward as training does (so that its parameters are gathered there too), and a checkpoint
is gathered to full tensors by all, written by the main process (lm_probes.rm.checkpoints). accelerate
sets FSDP up only on GPUs; ``RMGAP_FSDP_ON_CPU=1`` under a CPU launch gives the gloo processes its
FSDP2 plug-in, so that its own FSDP2 path (``fully_shard`` per decoder layer, then the root) runs and
is tested without GPUs (tests/test_distributed.py). Not supported: FSDP1 and DeepSpeed (refused in one
line), and sampling from a sharded LM (``rmgap hamiltonian``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

PRECISIONS = ("no", "bf16", "fp16")


def launched_processes() -> int:
    """Processes of this launch (WORLD_SIZE, set by accelerate launch / torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Runtime:
    accelerator: object | None = None  # accelerate.Accelerator, or None for a plain single process

    @classmethod
    def from_env(cls, mixed_precision: str = "no", cpu: bool = False) -> Runtime:
        """The runtime of this process: accelerate only where it changes something."""
        if mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed-precision must be one of {PRECISIONS}, got {mixed_precision!r}")
        if launched_processes() == 1 and mixed_precision == "no":
            return cls(None)
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        ddp = DistributedDataParallelKwargs()  # (find_unused_parameters: set by prepare)
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=[ddp])
        kind = acc.distributed_type.name
        if kind == "DEEPSPEED":
            raise ValueError(
                "DeepSpeed is not supported yet (its ZeRO-3 checkpoints are not gathered here); "
                "for 3B-8B models use FSDP2: rmgap/accelerate_configs/fsdp.yaml"
            )
        if kind == "FSDP" and acc.state.fsdp_plugin.fsdp_version != 2:
            raise ValueError("FSDP: rmgap needs FSDP2 (fsdp_version: 2, as in accelerate_configs/fsdp.yaml)")
        if os.environ.get("RMGAP_FSDP_ON_CPU", "") not in ("", "0"):
            if acc.device.type != "cpu" or acc.num_processes < 2:
                raise ValueError("RMGAP_FSDP_ON_CPU=1 takes a CPU launch of several processes")
            fsdp2_on_cpu(acc)
        return cls(acc)

    @property
    def mixed_precision(self) -> str:
        """The autocast of the forward passes: "no", "bf16" or "fp16"."""
        return "no" if self.accelerator is None else str(self.accelerator.mixed_precision)

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """Where this process's model belongs (None: wherever it was loaded)."""
        return None if self.accelerator is None else self.accelerator.device

    @property
    def lockstep(self) -> bool:
        """Whether forward passes are collective (a fully sharded back end: FSDP2)."""
        if self.accelerator is None:
            return False
        return self.accelerator.distributed_type.name == "FSDP"

    def shard(self, items: list) -> list:
        """This process's share of ``items``: every world-th one, from its rank."""
        return items[self.rank :: self.world]

    def share(self, items: list, minimum: int = 0) -> tuple[list, int]:
        """(this process's share of ``items``, how many of it are real): :meth:`shard` padded with repeats
        of ``items[0]``, to be given zero weight, up to ``minimum`` items and, where passes are collective
        (``lockstep``), up to the longest share, so that every process makes as many passes."""
        mine = list(self.shard(items))
        n = len(mine)
        target = max(minimum, -(-len(items) // self.world) if self.lockstep else 0)
        return mine + [items[0]] * (target - n) if items else mine, n

    def merge(self, table: dict) -> dict:
        """Union of every process's ``table`` (keys disjoint: each computed its shard), on every process."""
        if self.world == 1:
            return table
        from accelerate.utils import gather_object

        return dict(gather_object(list(table.items())))

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, find_unused: bool = False):
        """(module, optimizer) wrapped for the back end (DDP / FSDP2); unchanged for one plain
        process. ``find_unused``: some trainable parameters get no gradient (DDP must look for them)."""
        if self.accelerator is None:
            return module, optimizer
        self.accelerator.ddp_handler.find_unused_parameters = find_unused
        return self.accelerator.prepare(module, optimizer)

    def no_sync(self, module):
        """A context in which backward accumulates locally (no gradient all-reduce)."""
        if self.accelerator is None or self.world == 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(module)

    def autocast(self):
        """The mixed-precision context of the forward passes outside the prepared module (reference,
        evaluation), so that they run in the precision training runs in."""
        return contextlib.nullcontext() if self.accelerator is None else self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def shutdown() -> None:
    """Destroy the process group, where a launch made one, before the interpreter exits: gloo's worker
    threads outliving it can abort a process at exit (SIGABRT, "terminate called without an active
    exception"; pytorch/pytorch#190489), which fails a launch whose work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fsdp2_on_cpu(accelerator) -> None:
    """Turn a CPU launch's accelerator (gloo) to FSDP2, which accelerate itself sets up only on GPUs: its
    FSDP2 plug-in (transformer auto-wrap on ``_no_split_modules``, reshard after forward) and back-end
    type, so that ``prepare`` and the rest take accelerate's own FSDP2 path (RMGAP_FSDP_ON_CPU=1)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True
    )
    # (both shared states: an AcceleratorState made later copies the PartialState's type)
    accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
