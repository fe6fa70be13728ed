"""Everything that runs inside ``Trainer.fit``: ``OptimMixin``, the run's length, manual optimization, the lr finder,
schedule-free switching, the LightningCLI guard and the safe checkpoint IO.

May import ``config`` and everything below it, Lightning and OmegaConf; never ``callbacks``, ``cli`` or ``demos``.
"""

__all__: list[str] = []
