"""The ``clipping`` section and clipping itself: norm and value clipping keeping what they measured, the fused-step
contract, one optimizer step's decision and the adaptive thresholds (AutoClip, ZClip).

Pure torch: modules here import ``stats`` and the top-level leaves (``errors``, ``internals``, ``value_types``), never
``optim``, ``schedule``, ``config``, ``fit``, Lightning or OmegaConf.
"""

__all__: list[str] = []
