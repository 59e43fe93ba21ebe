"""Ctrl-C (SIGINT) and SIGTERM during training: finish the current step, checkpoint it, stop with one line.

:class:`StopRequest` turns the first signal into a flag that the training loop reads after each optimizer step
(a step is never cut in half, and the checkpoint is the usual atomic one). A second signal interrupts at once
(the previous checkpoint stays valid). Under torchrun every rank learns of a stop requested on any rank.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from marginface.training.distributed import DistInfo

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: loader workers ignore SIGINT / SIGTERM (Ctrl-C reaches the whole process
    group), so a stop is the training process's to handle: it finishes the step, checkpoints, and shuts them down.
    """
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; ``str()`` is the one line to print.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM (128 + the signal number, the shells' convention).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`signal_name` instead of raising."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.signal_number = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signal_name, self.signal_number = signal.Signals(signum).name, signum

    def requested(self, dist: DistInfo, device: torch.device) -> bool:
        """Whether any process received a stop signal (one all-reduce under torchrun)."""
        if not dist.enabled:
            return self.signal_name is not None
        import torch.distributed as tdist

        flag = torch.tensor([self.signal_number], device=device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if self.signal_name is None and int(flag):
            self.signal_name, self.signal_number = signal.Signals(int(flag)).name, int(flag)
        return self.signal_name is not None

    def interrupted(self, step: int, checkpoint: str) -> TrainingInterrupted:
        """The exception to raise once the checkpoint of ``step`` is written."""
        return TrainingInterrupted(f"{self.signal_name} at step {step}; checkpoint {checkpoint} written: run the "
                                   "same command to resume from it", 128 + self.signal_number)
