"""``optimizer: {name: muon}``: torch's Muon for the hidden matrices and an auxiliary optimizer for the rest, one
optimizer object, exactly equal to the two torch optimizers stepped separately on the same split."""

from __future__ import annotations

import copy
import io
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_optim import OptimConfigError, OptimMixin, build_optimizer
from lightning_optim.callbacks import LRMonitor
from lightning_optim.clipping.arithmetic import clip_gradients
from lightning_optim.names import named_parameters
from tests.models import MemoryLogger, trainer

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch 2.9")

if hasattr(torch.optim, "Muon"):
    from lightning_optim.optim.muon import MuonWithAux

VOCAB, BLOCK, WIDTH, LAYERS = 32, 8, 16, 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(WIDTH, 3 * WIDTH), "c_proj": nn.Linear(WIDTH, WIDTH)})
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(WIDTH, 4 * WIDTH), "c_proj": nn.Linear(4 * WIDTH, WIDTH)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.attn["c_attn"](self.ln_1(x)).split(WIDTH, dim=2)
        x = x + self.attn["c_proj"](F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return x + self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x))))


class GPT(nn.Module):
    """nanoGPT's GPT, small: token and position embeddings, pre-norm blocks, a final LayerNorm, a tied head."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(VOCAB, WIDTH),
                "wpe": nn.Embedding(BLOCK, WIDTH),
                "h": nn.ModuleList(Block() for _ in range(LAYERS)),
                "ln_f": nn.LayerNorm(WIDTH),
            }
        )
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.transformer["wte"].weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer["wte"](idx) + self.transformer["wpe"](torch.arange(idx.shape[1]))
        for block in self.transformer["h"]:
            x = block(x)
        return self.lm_head(self.transformer["ln_f"](x))


def gpt_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def cnn_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


GPT_HIDDEN = [
    f"transformer.h.{i}.{name}.weight"
    for i in range(LAYERS)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]
CNN_HIDDEN = ["0.weight", "3.weight"]


def gpt_batches(count: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(VOCAB, (4, BLOCK + 1), generator=generator) for _ in range(count)]


def cnn_batches(count: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 6, 6, generator=generator), torch.randint(10, (4,), generator=generator))
        for _ in range(count)
    ]


class Reference:
    """``torch.optim.Muon`` over the hidden matrices (a kernel as its ``(out, in*k*k)`` view) and ``torch.optim.AdamW``
    over the rest, two optimizers stepped one after the other."""

    def __init__(self, model: nn.Module, hidden: list[str], muon: dict[str, Any], adamw: dict[str, Any]) -> None:
        named = dict(model.named_parameters())
        self.kernels = [named[name] for name in hidden]
        # Leaf tensors sharing the kernels' memory: Muon updates them in place, and so the kernels.
        self.matrices = [p if p.ndim == 2 else p.detach().view(p.shape[0], -1) for p in self.kernels]
        self.muon = torch.optim.Muon(self.matrices, **muon)
        self.adamw = torch.optim.AdamW([p for name, p in named.items() if name not in hidden], **adamw)
        self.optimizers = (self.muon, self.adamw)

    def step(self) -> None:
        for matrix, kernel in zip(self.matrices, self.kernels, strict=True):
            if matrix is not kernel:
                matrix.grad = kernel.grad.view_as(matrix)
        self.muon.step()
        self.adamw.step()


def train(model, optimizer, batches, loss, schedulers=(), clip=None, step=None, clip_order=None) -> None:
    """``clip_order``: the parameters in the order whose norms are summed (the mixin's: the optimizer's groups)."""
    named = named_parameters(model) if clip_order is None else [("", p) for p in clip_order]
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        if clip is not None:
            clip_gradients(named, clip)
        (step or optimizer.step)()
        for scheduler in schedulers:
            scheduler.step()


def assert_equal_parameters(ours: nn.Module, reference: nn.Module) -> None:
    pairs = list(zip(ours.state_dict().items(), reference.state_dict().items(), strict=True))
    different = [name for (name, mine), (_, theirs) in pairs if not torch.equal(mine, theirs)]
    assert not different
    moved = [name for (name, mine), _ in pairs if mine.is_floating_point()]
    assert moved  # something was compared


def factor(step: int) -> float:
    return min(1.0, (step + 1) / 3) * 0.8**step


# --------------------------------------------------------------------------------------------------------- the split


def test_nanogpt_split_hidden_matrices_to_muon_tied_embedding_once_to_adamw():
    torch.manual_seed(0)
    model = GPT()
    optimizer = build_optimizer(model, {"name": "muon", "lr": 0.02})
    names = {id(p): name for name, p in model.named_parameters()}
    muon = [names[id(p)] for group in optimizer.param_groups if group["use_muon"] for p in group["params"]]
    aux = [names[id(p)] for group in optimizer.param_groups if not group["use_muon"] for p in group["params"]]
    assert muon == GPT_HIDDEN
    assert aux == [name for name in names.values() if name not in GPT_HIDDEN]
    assert "transformer.wte.weight" in aux and len(aux) == 20  # the tied head is that one tensor
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("muon", 0.02), ("aux", 0.001)]
    assert (
        optimizer.split_summary()
        == "Muon takes 8 tensors (6,144 parameters), AdamW takes 20 tensors (1,088 parameters)"
    )


def test_cnn_split_kernels_to_muon_head_and_norms_to_adamw():
    optimizer = build_optimizer(cnn(), {"name": "muon"})
    assert [tuple(p.shape) for p in optimizer.param_groups[0]["params"]] == [(8, 3, 3, 3), (16, 8, 3, 3)]
    assert (
        optimizer.split_summary() == "Muon takes 2 tensors (1,368 parameters), AdamW takes 7 tensors (226 parameters)"
    )


def test_rules_send_parameters_to_either_side_and_scale_each_sides_lr():
    config = {"name": "muon", "lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "aux": {"name": "adamw", "lr": 3e-3}}
    rules = [
        {"name": "mlp_out", "params": r"mlp\.c_proj\.weight$", "muon": False, "betas": [0.8, 0.9]},
        {"name": "pos", "params": r"wpe", "muon": True, "lr_scale": 0.5},
        {"name": "no_decay", "params": r"bias$|ln_", "weight_decay": 0.0, "lr_scale": 0.1},
    ]
    optimizer = build_optimizer(GPT(), config, rules)
    groups = [(g["name"], g["use_muon"], len(g["params"]), g["lr"]) for g in optimizer.param_groups]
    assert groups == [
        ("mlp_out", False, 2, 3e-3),
        ("pos", True, 1, 0.01),
        ("no_decay", False, 18, 3e-3 * 0.1),
        ("muon", True, 6, 0.02),
        ("aux", False, 1, 3e-3),
    ]
    assert optimizer.param_groups[0]["betas"] == [0.8, 0.9]
    assert optimizer.param_groups[2]["weight_decay"] == 0.0


def test_aux_lr_is_muons_under_match_rms_adamw_else_its_own():
    def lrs(config):
        return [group["lr"] for group in build_optimizer(cnn(), config).param_groups]

    assert lrs({"name": "muon", "lr": 0.02}) == [0.02, 0.001]
    assert lrs({"name": "muon", "lr": 0.02, "adjust_lr_fn": "match_rms_adamw"}) == [0.02, 0.02]
    assert lrs({"name": "muon", "lr": 0.02, "aux": {"name": "sgd", "lr": 0.1}}) == [0.02, 0.1]


@pytest.mark.parametrize(
    ("section", "rules", "message"),
    [
        ({"aux": {"name": "adamw", "betaz": [0.9, 0.9]}}, [], "optim_config.optimizer.aux.betaz"),
        ({"aux": {"name": "adamw", "lr": "fast"}}, [], "optim_config.optimizer.aux.lr = 'fast'"),
        ({"aux": {"name": "lbfgs"}}, [], "optim_config.optimizer.aux.name = 'lbfgs'"),
        ({"aux": {"name": "muon"}}, [], "optim_config.optimizer.aux.name = 'muon'"),
        ({"aux": "adamw"}, [], "optim_config.optimizer.aux = 'adamw'"),
        ({}, [{"name": "b", "params": "bias$", "muon": True}], "optim_config.param_groups[0].muon = True"),
        ({}, [{"name": "b", "params": "bias$", "muon": "yes"}], "optim_config.param_groups[0].muon = 'yes'"),
        ({}, [{"name": "b", "params": "bias$", "betas": [0.9, 0.9]}], "optim_config.param_groups[0].betas"),
    ],
)
def test_bad_sections_name_the_key(section, rules, message):
    with pytest.raises(OptimConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_optimizer(GPT(), {"name": "muon", **section}, rules)


# -------------------------------------------------------------------------------------- equal to torch's two optimizers


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "hidden", "batches", "loss"),
    [(GPT, GPT_HIDDEN, gpt_batches, gpt_loss), (cnn, CNN_HIDDEN, cnn_batches, cnn_loss)],
    ids=["nanogpt", "cnn"],
)
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "scheduled"])
@pytest.mark.parametrize("clip", [None, 0.05], ids=["unclipped", "clipped"])
def test_equal_to_muon_and_adamw_stepped_separately(make, hidden, batches, loss, schedule, clip):
    torch.manual_seed(0)
    model = make()
    reference_model = copy.deepcopy(model)
    config = {"name": "muon", "lr": 0.02, "aux": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95]}}
    optimizer = build_optimizer(model, config)
    reference = Reference(reference_model, hidden, {"lr": 0.02}, {"lr": 3e-3, "betas": (0.9, 0.95)})
    schedulers = [torch.optim.lr_scheduler.LambdaLR(optimizer, factor)] if schedule else []
    references = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in reference.optimizers] if schedule else []
    train(model, optimizer, batches(), loss, schedulers, clip)
    train(reference_model, None, batches(), loss, references, clip, reference.step)
    assert_equal_parameters(model, reference_model)
    assert optimizer.param_groups[0]["lr"] == reference.muon.param_groups[0]["lr"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "hidden", "batches", "loss"),
    [(GPT, GPT_HIDDEN, gpt_batches, gpt_loss), (cnn, CNN_HIDDEN, cnn_batches, cnn_loss)],
    ids=["nanogpt", "cnn"],
)
def test_resume_from_a_state_dict_is_exact(make, hidden, batches, loss):
    torch.manual_seed(0)
    model = make()
    reference_model = copy.deepcopy(model)
    config = {"name": "muon", "lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01}
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    train(model, optimizer, batches()[:4], loss, [scheduler])
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(resumed, factor)  # built before loading, as Lightning does
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.muon.param_groups[0] is resumed.param_groups[0] and resumed.muon.state is resumed.state
    again = resumed.state_dict()
    assert again["param_groups"] == saved["optimizer"]["param_groups"]
    assert all(
        torch.equal(again["state"][i][key], value)
        for i, state in saved["optimizer"]["state"].items()
        for key, value in state.items()
    )
    scheduler.load_state_dict(saved["scheduler"])
    train(model, resumed, batches()[4:], loss, [scheduler])

    reference = Reference(
        reference_model, hidden, {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01}, {"lr": 0.02}
    )
    references = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in reference.optimizers]
    train(reference_model, None, batches(), loss, references, step=reference.step)
    assert_equal_parameters(model, reference_model)


def test_one_closure_call_per_step():
    model = cnn()
    optimizer = build_optimizer(model, {"name": "muon"})
    (images, labels), calls = cnn_batches(1)[0], []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = cnn_loss(model, (images, labels))
        loss.backward()
        return loss

    assert optimizer.step(closure) is not None and len(calls) == 1


def test_a_group_added_later_joins_the_side_its_shapes_pick():
    model, extra = cnn(), nn.Linear(3, 4)
    optimizer = build_optimizer(model, {"name": "muon", "lr": 0.02})
    optimizer.add_param_group({"params": extra.parameters(), "lr": 0.002, "name": "unfrozen"})
    added = [(g["name"], g["use_muon"], g["lr"]) for g in optimizer.param_groups[2:]]
    assert added == [("unfrozen/muon", True, 0.002), ("unfrozen/aux", False, 0.002)]
    assert optimizer.muon.param_groups[-1] is optimizer.param_groups[2]


# ------------------------------------------------------------------------------------------------------- in Lightning


class LitGPT(OptimMixin, L.LightningModule):
    def __init__(self, optim_config: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gpt = GPT()
        self.optim_config = optim_config

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return gpt_loss(self.gpt, batch[0])


LIT_CONFIG = {
    "optimizer": {"name": "muon", "lr": 0.02, "aux": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}},
    "param_groups": [{"name": "no_decay", "params": r"bias$|ln_", "weight_decay": 0.0}],
    "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 6},
}


def fit_gpt(max_steps: int, tmp_path, ckpt_path=None, batches: int = 8, **kwargs: Any) -> LitGPT:
    model = LitGPT(LIT_CONFIG)
    data = DataLoader(TensorDataset(torch.cat(gpt_batches()[:batches])), batch_size=4)
    trainer(max_steps=max_steps, gradient_clip_val=0.05, default_root_dir=tmp_path, **kwargs).fit(
        model, data, ckpt_path=ckpt_path
    )
    return model


@pytest.mark.slow
def test_lightning_sees_one_optimizer_equal_to_the_two_torch_optimizers(tmp_path, caplog):
    logger = MemoryLogger()
    with caplog.at_level("INFO"):
        model = fit_gpt(4, tmp_path, logger=logger, log_every_n_steps=1, callbacks=[LRMonitor(log_momentum=True)])
    (optimizer,) = model.trainer.optimizers
    assert isinstance(optimizer, MuonWithAux)
    assert [g["name"] for g in optimizer.param_groups] == ["no_decay", "muon", "aux"]
    assert (
        caplog.messages.count("Muon takes 8 tensors (6,144 parameters), AdamW takes 20 tensors (1,088 parameters)") == 1
    )
    logged = {key for _, metrics in logger.logged for key in metrics}
    assert logged == {f"lr-MuonWithAux/{g}{s}" for g in ("no_decay", "muon", "aux") for s in ("", "-momentum")}

    reference_model = LitGPT(LIT_CONFIG).gpt
    hidden = GPT_HIDDEN
    reference = Reference(reference_model, hidden, {"lr": 0.02}, {"lr": 3e-3, "weight_decay": 0.0})
    named = dict(reference_model.named_parameters())
    no_decay = [p for name, p in named.items() if name.endswith("bias") or ".ln_" in name]
    rest = [p for name, p in named.items() if name not in hidden and all(p is not q for q in no_decay)]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": rest}]
    reference.adamw = torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.0)
    schedule = model.trainer.lr_scheduler_configs[0].scheduler.schedule
    references = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (reference.muon, reference.adamw)]
    order = [*no_decay, *reference.kernels, *rest]
    train(reference_model, None, gpt_batches()[:4], gpt_loss, references, 0.05, reference.step, order)
    assert_equal_parameters(model.gpt, reference_model)


@pytest.mark.slow
def test_lightning_resume_from_a_checkpoint_is_exact(tmp_path):
    through = fit_gpt(-1, tmp_path / "through", batches=2, max_epochs=2)
    first = fit_gpt(-1, tmp_path / "first", batches=2, max_epochs=1)
    first.trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = fit_gpt(-1, tmp_path / "resumed", tmp_path / "epoch1.ckpt", batches=2, max_epochs=2)
    assert resumed.trainer.global_step == 4
    assert_equal_parameters(resumed.gpt, through.gpt)
