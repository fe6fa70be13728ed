"""Lightning callbacks of lightning_optim: the monitors, ``LRSchedule``, the collector and the TensorBoard dashboard.

May import ``fit`` and everything below it and Lightning; never ``cli`` or ``demos``.
"""

from lightning_optim.callbacks.batchnorm_monitor import BatchNormMonitor
from lightning_optim.callbacks.dashboard import TensorBoardDashboard
from lightning_optim.callbacks.grad_norm_monitor import GradNormMonitor
from lightning_optim.callbacks.lr_monitor import LRMonitor
from lightning_optim.callbacks.lr_schedule import LRSchedule
from lightning_optim.callbacks.update_monitor import UpdateMonitor

__all__ = ["BatchNormMonitor", "GradNormMonitor", "LRMonitor", "LRSchedule", "TensorBoardDashboard", "UpdateMonitor"]
