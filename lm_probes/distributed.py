"""Several processes (or mixed precision) through accelerate: the one place that knows about them.

    accelerate launch --cpu --num_processes 2 -m rmgap train --train-set ultrafeedback/train ...
    accelerate launch --config_file lm_probes/accelerate_configs/ddp.yaml -m rmgap persona --preset paper
    rmgap train ... --mixed-precision bf16          # one process, bf16 autocast, fp32 master weights

``Runtime.from_env()`` gives the run's runtime: a plain single process (no accelerate state touched,
numbers bitwise as before) unless the command was started by ``accelerate launch`` with more than one
process or mixed precision was asked for; then an ``accelerate.Accelerator`` (DDP over gloo on CPUs,
NCCL on GPUs; FSDP / DeepSpeed from the launch config). What lm_probes.train does with it:

- the model is wrapped by ``prepare`` (DDP averages gradients over processes, so each process scales
  its loss by the world size: the summed gradient of one process over the same pairs results);
- a step's micro-batches go round-robin to the processes (``shard``), a process with none in a step
  takes part with a zero-weighted one; the effective batch is ``batch_size`` pairs whatever the count;
- reference log-probs and evaluation rewards are computed on shards and gathered (``merge``), so every
  process holds all of them, in the same order as one process would;
- files (checkpoints, outputs) are written by the main process only (``is_main``), and a checkpoint
  holds the unwrapped model, so it resumes under any process count.
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
        return cls(Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=[ddp]))

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

    def shard(self, items: list) -> list:
        """This process's share of ``items``: every world-th one, from its rank."""
        return items[self.rank :: self.world]

    def merge(self, table: dict) -> dict:
        """Union of every process's ``table`` (keys disjoint: each computed its shard), on every process."""
        if self.world == 1:
            return table
        from accelerate.utils import gather_object

        return dict(gather_object(list(table.items())))

    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, find_unused: bool = False):
        """(module, optimizer) wrapped for the back end (DDP / FSDP / DeepSpeed); unchanged for one plain
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
