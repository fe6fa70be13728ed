"""The ``scheduler`` section: closed-form schedules (``step -> factor``), the scheduler registry, the torch
``LRScheduler`` classes that run them and building one over an optimizer.

Pure torch: modules here import only the top-level leaves (``errors``, ``targets``, ``value_types``), never ``optim``,
``clipping``, ``stats``, ``config``, ``fit``, Lightning or OmegaConf.
"""

__all__: list[str] = []
