"""The whole ``optim_config``: its typed form and plain containers, its validation into frozen specs before any model
or trainer exists, several named optimizers, and the learning-rate preview.

May import ``optim``, ``schedule``, ``clipping``, ``stats``, the top-level leaves and OmegaConf; never ``fit``,
``callbacks``, ``cli`` or Lightning.
"""

__all__: list[str] = []
