"""Host syncs of all monitors together: one per logging step, none on the other steps.

A device-to-host read (``item()``, ``float(tensor)``, ``tolist()``, ``bool(tensor)``, ...) makes the host wait for
the device. On a CPU nothing waits, and the profiler's ``aten::_local_scalar_dense`` misses ``tolist()``, so the
reads are counted where Python makes them: a ``TorchFunctionMode`` sees every conversion of a tensor to Python
values, and counts those made from lightning_optim's code (a frame of the package on the stack).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

import lightning_optim
from lightning_optim.callbacks import BatchNormMonitor, GradNormMonitor, LRMonitor, TensorBoardDashboard, UpdateMonitor
from lightning_optim.demos import DigitsCNN
from lightning_optim.internals import should_log
from tests import tb
from tests.models import trainer

HOST_READS = frozenset({"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"})
"""Tensor methods that copy values to the host: on a GPU each one waits for the device."""
PACKAGE = Path(lightning_optim.__file__).parent


def package_caller() -> str | None:
    """``file:line`` of the innermost lightning_optim frame on the stack, or None."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(PACKAGE):
            return f"{path.relative_to(PACKAGE)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class HostReads(TorchFunctionMode):
    """Records the caller of every host read made from lightning_optim's code."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", None) in HOST_READS and (caller := package_caller()) is not None:
            self.callers.append(caller)
        return func(*args, **(kwargs or {}))


class ReadsPerStep(L.Callback):
    """First callback: the host reads of each training step, from one batch start to the next (the last step to the
    end of training), with whether it was a logging step."""

    def __init__(self) -> None:
        self.steps: list[tuple[bool, Counter[str]]] = []
        self._mode: HostReads | None = None

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.steps[-1][1].update(self._mode.callers)
            self._mode = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._close()
        self.steps.append((should_log(trainer), Counter()))
        self._mode = HostReads()
        self._mode.__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()


def digits_like(batches: int, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batches * batch_size, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (batches * batch_size,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


OPTIM_CONFIG = {
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 9},
}


@pytest.mark.parametrize("order", ["as_documented", "reversed"])
def test_all_monitors_together_read_the_host_once_per_logging_step_and_never_otherwise(tmp_path, order):
    counter = ReadsPerStep()
    monitors: list[L.Callback] = [
        GradNormMonitor(per_layer_depth=1),
        LRMonitor(log_momentum=True, log_weight_decay=True),
        TensorBoardDashboard(),
        BatchNormMonitor(report=False),
        UpdateMonitor(per_layer_depth=1, per_param_group=True),
    ]
    if order == "reversed":
        monitors.reverse()
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    fit = trainer(callbacks=[counter, *monitors], logger=logger, log_every_n_steps=3, gradient_clip_val=1.0)
    fit.fit(DigitsCNN(width=4, optim_config=OPTIM_CONFIG), digits_like(9))

    assert [logging for logging, _ in counter.steps] == [False, False, True] * 3
    reads = [(logging, sum(callers.values()), dict(callers)) for logging, callers in counter.steps]
    assert [count for logging, count, _ in reads if not logging] == [0] * 6, reads
    assert [count for logging, count, _ in reads if logging] == [1] * 3, reads
    # The one read carried every monitor's values of the step.
    logged = tb.scalars(tmp_path)
    for key in (
        "grad_norm/total",
        "grad_norm/clip_fraction",
        "grad_norm/features",
        "lr-SGD/default",
        "lr-SGD/default-weight_decay",
        "batchnorm/features.1/mean_drift",
        "batchnorm/features.4/running_var_max",
        "update/ratio/features",
        "update/cos_grad/group/default",
        "optimizer_state/momentum_buffer_norm/head",
    ):
        assert [step for step, _ in logged[key]] == [2, 5, 8], key
