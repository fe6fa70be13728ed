"""Lightning callbacks of lightning_optim."""

from lightning_optim.callbacks.lr_schedule import LRSchedule

__all__ = ["LRSchedule"]
