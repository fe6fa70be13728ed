"""Muon for the hidden matrices and an auxiliary optimizer for the rest, as one ``torch.optim.Optimizer``.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> optimizer = MuonWithAux(muon_groups(model, lr=0.02, aux_lr=1e-3))
    >>> [(group["name"], group["use_muon"], group["lr"]) for group in optimizer.param_groups]
    [('muon', True, 0.02), ('aux', False, 0.001)]
    >>> optimizer.split_summary()
    'Muon takes 1 tensor (32 parameters), AdamW takes 3 tensors (26 parameters)'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_optim.errors import config_error, key_path
from lightning_optim.names import named_modules
from lightning_optim.optim.param_groups import (
    RULE_KEYS,
    LayerDecay,
    Placement,
    Selector,
    compile_rules,
    group_name,
    place_parameters,
    warn_unmatched,
)

__all__ = ["MUON_KEY", "MuonWithAux", "muon_groups"]

MUON_KEY = "muon"
"""The ``param_groups`` rule key sending its parameters to Muon (``true``) or the auxiliary optimizer (``false``)."""

_SIDE_NAMES = {True: "muon", False: "aux"}


class _FlatMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also takes convolution kernels, each stepped as a matrix ``(out, in * k * k)``.

    The kernel, its gradient and its momentum buffer are viewed as that matrix (Keller Jordan's flattening), so torch's
    own update runs on them unchanged and writes through to the kernel; a 2-D parameter takes torch's path exactly.
    """

    def __init__(self, params: Iterable[dict[str, Any]], **options: Any) -> None:
        # torch's Muon checks the options but refuses any parameter that is not 2-D when built: it is built over a
        # stand-in matrix, which is then replaced by the real groups.
        super().__init__([torch.empty(1, 1)], **options)
        self.param_groups = []
        for group in params:
            self.add_param_group(group)

    @override
    def _init_group(
        self,
        group: MutableMapping[str, Any],
        params_with_grad: list[torch.Tensor],
        grads: list[torch.Tensor],
        muon_momentum_bufs: list[torch.Tensor],
    ) -> bool:
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        for index, param in enumerate(params_with_grad):
            if param.ndim > 2:
                params_with_grad[index] = _as_matrix(param)
                grads[index] = _as_matrix(grads[index])
                muon_momentum_bufs[index] = _as_matrix(muon_momentum_bufs[index])
        return has_complex


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_contiguous():
        raise ValueError(
            f"Muon steps a {tuple(tensor.shape)} kernel as a matrix view of its memory, which needs a contiguous "
            "tensor (not channels_last); keep the model in torch.contiguous_format or send it to the auxiliary "
            "optimizer with a param_groups rule (muon: false)."
        )
    return tensor.view(tensor.shape[0], -1)


class MuonWithAux(torch.optim.Optimizer):
    """Muon over the hidden matrices, an auxiliary optimizer (AdamW by default) over every other parameter.

    One optimizer object, as Lightning, schedulers, LR monitors and checkpoints expect: :attr:`param_groups` are the
    union of its two parts' groups (the same dicts, so an lr written into a group reaches the part stepping it), each
    carrying ``use_muon``; :attr:`state` is one dict both parts write into; :meth:`step` evaluates the closure once and
    steps Muon, then the auxiliary optimizer; :meth:`state_dict` is torch's over all groups in order. Stepping it is
    stepping ``torch.optim.Muon`` and the auxiliary optimizer separately on the same split. A convolution's kernel is
    stepped as its ``(out, in * k * k)`` matrix, as in the Muon paper (torch's Muon refuses it).

    A group without ``use_muon`` is split by shape: parameters of two or more dimensions to Muon, the rest to the
    auxiliary optimizer. Which matrices are embeddings or the output head only the model tells: :func:`muon_groups`
    reads it.

    Args:
        params: parameters or parameter groups (``use_muon`` in a group picks its side).
        lr: Muon's learning rate.
        weight_decay: Muon's decoupled weight decay.
        momentum: Muon's momentum factor.
        nesterov: Nesterov momentum for Muon.
        ns_coefficients: the Newton-Schulz iteration's coefficients.
        eps: added to the norm before the Newton-Schulz iteration.
        ns_steps: Newton-Schulz iterations.
        adjust_lr_fn: ``None``/``"original"`` (Keller Jordan's shape factor) or ``"match_rms_adamw"`` (Moonlight's:
            the update's RMS matches AdamW's, so the auxiliary groups take Muon's lr unless they set their own).
        aux: builds the auxiliary optimizer from its parameter groups, e.g.
            ``functools.partial(torch.optim.AdamW, betas=(0.9, 0.95))``; ``None`` is ``torch.optim.AdamW``.

    Examples:
        >>> conv = torch.nn.Conv2d(2, 4, 3)
        >>> optimizer = MuonWithAux(conv.parameters(), lr=0.02, adjust_lr_fn="match_rms_adamw")
        >>> [(tuple(g["params"][0].shape), type(part).__name__, g["lr"]) for g, part in optimizer.parts()]
        [((4, 2, 3, 3), '_FlatMuon', 0.02), ((4,), 'AdamW', 0.02)]
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-07,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        aux: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
    ) -> None:
        self._muon_options = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        self._aux_factory = torch.optim.AdamW if aux is None else aux
        self.muon: torch.optim.Optimizer | None = None
        self.aux: torch.optim.Optimizer | None = None
        super().__init__(params, dict(self._muon_options))

    @override
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to Muon (``use_muon`` true) or the auxiliary optimizer; without ``use_muon``, split by shape.

        Raises:
            ValueError: a parameter of fewer than two dimensions for Muon, or one already in a group.
        """
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if "use_muon" not in param_group:
            sides = {True: [p for p in params if p.ndim >= 2], False: [p for p in params if p.ndim < 2]}
            for use_muon, members in sides.items():
                if not members:
                    continue
                group = {**param_group, "params": members, "use_muon": use_muon}
                if "name" in param_group and all(sides.values()):
                    group["name"] = f"{param_group['name']}/{_SIDE_NAMES[use_muon]}"
                self.add_param_group(group)
            return
        param_group["params"] = params
        use_muon = bool(param_group["use_muon"])
        vectors = [tuple(p.shape) for p in params if p.ndim < 2]
        if use_muon and vectors:
            raise ValueError(f"Muon takes parameters of two or more dimensions; got shapes {vectors}.")
        taken = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        if not use_muon and self._muon_options["adjust_lr_fn"] == "match_rms_adamw":
            param_group.setdefault("lr", self._muon_options["lr"])
        part = self.muon if use_muon else self.aux
        if part is not None:
            part.add_param_group(param_group)
        else:
            part = _FlatMuon([param_group], **self._muon_options) if use_muon else self._aux_factory([param_group])
            part.state = self.state
            if use_muon:
                self.muon = part
            else:
                self.aux = part
        self.param_groups.append(param_group)

    def parts(self) -> list[tuple[dict[str, Any], torch.optim.Optimizer]]:
        """Each parameter group with the optimizer that steps it, in :attr:`param_groups` order."""
        return [(group, self.muon if group["use_muon"] else self.aux) for group in self.param_groups]  # type: ignore[misc]

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (with gradients enabled), then step Muon and the auxiliary optimizer.

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in (self.muon, self.aux):
            if part is not None:
                part.step()
        return loss

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch's state dict of all groups, then hand each part its groups and the shared state again."""
        super().load_state_dict(state_dict)
        for use_muon, part in ((True, self.muon), (False, self.aux)):
            if part is not None:
                groups = [group for group in self.param_groups if group["use_muon"] == use_muon]
                part.__setstate__({"state": self.state, "param_groups": groups})

    def split_summary(self) -> str:
        """How many tensors and parameters each side takes, as printed at fit start."""
        sides = []
        for use_muon, part in ((True, self.muon), (False, self.aux)):
            params = [p for group in self.param_groups if group["use_muon"] == use_muon for p in group["params"]]
            name = "Muon" if use_muon else type(part).__name__ if part is not None else "the auxiliary optimizer"
            tensors = "tensor" if len(params) == 1 else "tensors"
            sides.append(f"{name} takes {len(params)} {tensors} ({sum(p.numel() for p in params):,} parameters)")
        return ", ".join(sides)


def aux_parameter_ids(module: nn.Module) -> set[int]:
    """The matrices that are not hidden: every ``Embedding``/``EmbeddingBag`` weight and the output head's.

    The output head is the last ``nn.Linear`` the model registers (nanoGPT's ``lm_head``, a classifier's last
    layer). A tied weight (nanoGPT's ``lm_head.weight`` is ``transformer.wte.weight``) is one parameter.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 5))
        >>> sorted(name for name, p in model.named_parameters() if id(p) in aux_parameter_ids(model))
        ['0.weight', '2.bias', '2.weight']
    """
    modules = [sub for _, sub in named_modules(module)]
    heads = [sub for sub in modules if isinstance(sub, nn.Linear)][-1:]
    embeddings = [sub for sub in modules if isinstance(sub, (nn.Embedding, nn.EmbeddingBag))]
    return {id(p) for sub in [*embeddings, *heads] for p in sub.parameters(recurse=False)}


def muon_groups(
    module: nn.Module,
    named_parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
    rules: Sequence[Mapping[str, Any]] = (),
    selectors: Sequence[Selector] | None = None,
    *,
    lr: float,
    aux_lr: float,
    layer_decay: LayerDecay | None = None,
    where: str = "",
) -> list[dict[str, Any]]:
    """``module``'s trainable parameters in named groups for :class:`MuonWithAux`, each with ``use_muon`` and ``lr``.

    Hidden matrices (two or more dimensions, not in :func:`aux_parameter_ids`) go to Muon, the rest to the auxiliary
    optimizer; a rule's ``muon: true|false`` sends its parameters to one side. Rules match as in
    :func:`~lightning_optim.optim.param_groups.group_parameters` (first match wins; ``lr_scale`` and ``layer_decay``
    multiply the lr of the side a parameter lands on). Unmatched parameters form the groups ``muon`` and ``aux``; a
    rule's group keeps its name, or becomes ``<name>/muon`` and ``<name>/aux`` when its parameters land on both sides;
    under ``layer_decay`` each name ends in the depth (``muon/layer_2``). ``where``, the key path of the section
    holding ``param_groups``, is named in errors and warnings.

    Raises:
        OptimConfigError: a rule sends a parameter of fewer than two dimensions to Muon.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
        >>> rules = [{"name": "no_decay", "params": r"bias$|^1\\.", "weight_decay": 0.0}]
        >>> groups = muon_groups(model, rules=rules, lr=0.02, aux_lr=3e-4)
        >>> [(g["name"], len(g["params"]), g["lr"]) for g in groups]
        [('no_decay', 4, 0.0003), ('muon', 1, 0.02), ('aux', 1, 0.0003)]
    """
    if named_parameters is None:
        named_parameters = module.named_parameters()
    if selectors is None:
        selectors = compile_rules(rules, where)
    aux_ids = aux_parameter_ids(module)
    members: dict[tuple[int, bool, int | None], list[Placement]] = {}
    for placement in place_parameters(named_parameters, selectors, module, layer_decay, rules, where):
        parameter, index = placement.parameter, placement.rule
        use_muon = rules[index].get(MUON_KEY) if index < len(rules) else None
        if use_muon is None:
            use_muon = parameter.ndim >= 2 and id(parameter) not in aux_ids
        elif use_muon and parameter.ndim < 2:
            raise config_error(
                key_path(where, f"param_groups[{index}].{MUON_KEY}"),
                True,
                f"false for a rule matching {placement.name!r} of shape {tuple(parameter.shape)}: Muon takes matrices "
                "only",
            )
        members.setdefault((index, use_muon, placement.depth), []).append(placement)
    groups = []
    for index in range(len(rules) + 1):
        rule = rules[index] if index < len(rules) else {}
        sides = [use_muon for use_muon in (True, False) if any(key[:2] == (index, use_muon) for key in members)]
        if index < len(rules) and not sides:
            warn_unmatched(index, rule, where)
        options = {key: value for key, value in rule.items() if key not in (*RULE_KEYS, MUON_KEY)}
        for use_muon in sides:
            side = _SIDE_NAMES[use_muon]
            name = side if not rule else rule["name"] if len(sides) == 1 else f"{rule['name']}/{side}"
            base = options.get("lr", lr if use_muon else aux_lr)
            keys = sorted((key for key in members if key[:2] == (index, use_muon)), key=lambda key: key[2] or 0)
            for key in keys:
                placed = members[key]
                params = [placement.parameter for placement in placed]
                group = {**options, "params": params, "name": group_name(name, key[2]), "use_muon": use_muon}
                group["lr"] = base * rule.get("lr_scale", 1.0) * placed[0].decay
                groups.append(group)
    return groups
