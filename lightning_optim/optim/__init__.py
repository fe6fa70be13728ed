"""The ``optimizer`` and ``param_groups`` sections: the optimizer registry (torch's optimizers and the optional
packages' by name), parameter-group rules and building an optimizer over a module.

Pure torch: modules here import only the top-level leaves (``errors``, ``names``, ``targets``, ``value_types``),
never ``schedule``, ``clipping``, ``stats``, ``config``, ``fit``, Lightning or OmegaConf.
"""

__all__: list[str] = []
