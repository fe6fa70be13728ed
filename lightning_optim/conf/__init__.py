"""Hydra config tree of ``lightning-optim-train``, ``lightning-optim-schedule`` and ``lightning-optim-lr-find``.

A package so that Hydra finds it as ``pkg://lightning_optim.conf`` from an installed wheel.

Examples:
    >>> from hydra import compose, initialize_config_module
    >>> with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
    ...     cfg = compose(config_name="train", overrides=["optimizer=adamw"])
    >>> cfg.optimizer.name, cfg.scheduler.name
    ('adamw', 'warmup_cosine')
"""
