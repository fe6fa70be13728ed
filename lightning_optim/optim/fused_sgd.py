"""Keep torch's fused SGD exact when its first step is skipped.

``torch.optim.SGD(fused=True)`` with momentum allocates the momentum buffers with ``empty_like`` on its first step
and fills them in the kernel; when that step is skipped (``found_inf`` set by AMP's ``GradScaler`` or by
``GradNormMonitor(nonfinite="skip")``) the buffers stay uninitialised and the next step reads whatever memory held.
With ``dampening=0`` a zero buffer gives exactly torch's first step (``buf = momentum * 0 + grad = grad``), so the
buffers are created as zeros just before a group's first step.

Examples:
    >>> import torch
    >>> weight = torch.nn.Parameter(torch.ones(3))
    >>> optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, fused=True)
    >>> zero_momentum_before_first_step(optimizer)
    >>> weight.grad = torch.ones(3)
    >>> optimizer.found_inf = torch.ones(())  # the first step is skipped
    >>> optimizer.step()
    >>> optimizer.found_inf = torch.zeros(())
    >>> optimizer.step()
    >>> weight.detach()
    tensor([0.9000, 0.9000, 0.9000])
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["zero_momentum_before_first_step"]


def zero_momentum_before_first_step(optimizer: torch.optim.Optimizer) -> None:
    """Give a fused SGD's parameters zero momentum buffers before their first step (nothing for other optimizers).

    A buffer is created for a parameter that already has its gradient when the step starts: under AMP's
    ``GradScaler`` the closure runs before ``scaler.step``, so every buffer the skipped step would leave uninitialised
    exists. When the closure runs inside the step (Lightning without AMP), the gradients are not there yet and torch's
    own first step runs; :func:`~lightning_optim.clipping.step.clip_for_step` then decides a skip on the host.

    Groups added later (``add_param_group``, finetuning callbacks) are covered too. Groups with ``dampening != 0``
    are left to torch: there a zero buffer would not equal torch's first step.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    initialised: set[int] = set()

    def zero_missing_buffers(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for group in optimizer.param_groups:
            if id(group) in initialised or not _reads_uninitialised_buffers(group):
                continue
            missing = [p for p in group["params"] if optimizer.state.get(p, {}).get("momentum_buffer") is None]
            for parameter in missing:
                # Only where a gradient exists already (AMP: the closure ran before the scaler's step): torch reads
                # exactly these buffers. Without one, torch's own first step follows and a skip is decided on the host.
                if parameter.grad is not None:
                    optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(
                        parameter, memory_format=torch.preserve_format
                    )
            if all(p.grad is not None for p in missing):
                initialised.add(id(group))

    optimizer.register_step_pre_hook(zero_missing_buffers)


def _reads_uninitialised_buffers(group: dict[str, Any]) -> bool:
    return bool(group.get("fused")) and group["momentum"] != 0 and group["dampening"] == 0
