"""`smallcls train` as tests/test_distributed.py launches it, alone or under torchrun.

Dropout is off, in the head here and in the backbone by the test's model config: each process
draws its own masks for its half of a batch, which would add run-to-run noise on top of what
the test compares (one process against two on the same global batches). `--kill-after-save`
kills every process like `kill -9` once all of them have written their part of the first
checkpoint (rank 0 the weights and optimizer, each process its RNG state).

    python -m tests.distributed_train train ARGS...
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed_train \
        train ARGS... [--kill-after-save]
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import torch.distributed as dist
from transformers import TrainerCallback

import training.train
from smallcls.cli import main
from training.families import ModelSpec


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if dist.is_initialized():
            dist.barrier()  # every process has finished writing the checkpoint
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    argv = sys.argv[1:]
    training.train.ModelSpec = functools.partial(ModelSpec, dropout=0.0)
    if "--kill-after-save" in argv:
        argv.remove("--kill-after-save")
        training.train.train = functools.partial(training.train.train, callbacks=[KillAfterSave()])
    sys.exit(main(argv))
