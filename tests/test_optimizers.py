"""Every torch optimizer by name, ``_target_``, and the checks done before anything is built."""

import inspect

import pytest
import torch

from lightning_optim import OPTIMIZERS, OptimConfigError, build_optimizer
from lightning_optim.optim.registry import optimizer_class


class SparseModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 3, sparse=True)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.embedding(index).sum()


def test_every_torch_optimizer_has_a_name():
    torch_optimizers = {
        cls for _, cls in inspect.getmembers(torch.optim, inspect.isclass) if issubclass(cls, torch.optim.Optimizer)
    } - {torch.optim.Optimizer}
    # torch's Muon is the Muon side of `muon` (MuonWithAux; tests/test_muon.py).
    assert torch_optimizers - {getattr(torch.optim, "Muon", None)} <= set(OPTIMIZERS.values())


@pytest.mark.parametrize("name", [name for name in OPTIMIZERS if name not in ("sparse_adam", "lbfgs", "muon")])
def test_named_optimizer_takes_a_step_like_torch(name):
    torch.manual_seed(0)
    ours_model, torch_model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(ours_model, {"name": name.upper(), "lr": 0.01})
    reference = OPTIMIZERS[name](torch_model.parameters(), lr=0.01)
    inputs = torch.randn(5, 3)
    for model, optimizer in ((ours_model, ours), (torch_model, reference)):
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).pow(2).sum().backward()
            optimizer.step()
    assert type(ours) is OPTIMIZERS[name]
    for mine, theirs in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_lbfgs_steps_with_a_closure():
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model, {"name": "lbfgs", "lr": 0.5, "max_iter": 5})
    inputs, targets = torch.randn(8, 2), torch.randn(8, 1)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        return loss

    before = closure().item()
    optimizer.step(closure)
    assert closure().item() < before


def test_sparse_adam_on_sparse_embedding():
    model = SparseModel()
    optimizer = build_optimizer(model, {"name": "sparse_adam", "lr": 0.1})
    before = model.embedding.weight.detach().clone()
    model(torch.tensor([1, 2])).backward()
    optimizer.step()
    changed = (model.embedding.weight != before).any(dim=1)
    assert changed.tolist() == [False, True, True] + [False] * 7


def test_target_names_an_optimizer_class_and_options_are_checked():
    model = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(model, {"_target_": "torch.optim.AdamW", "lr": 0.002, "betas": [0.9, 0.98]})
    assert type(optimizer) is torch.optim.AdamW
    assert tuple(optimizer.param_groups[0]["betas"]) == (0.9, 0.98)
    with pytest.raises(OptimConfigError, match=r"optimizer\.bettas = .* Did you mean 'betas'\?"):
        build_optimizer(model, {"_target_": "torch.optim.AdamW", "bettas": [0.9, 0.98]})


@pytest.mark.parametrize(
    "target",
    ["os.system", "subprocess.Popen", "torch.nn.Linear", "builtins.eval", "nosuchmodule.Thing", "AdamW"],
)
def test_target_that_is_not_an_optimizer_class_is_refused_before_it_is_called(target, monkeypatch):
    called = []
    monkeypatch.setattr("os.system", lambda *args: called.append(args))
    with pytest.raises(OptimConfigError, match=r"optimizer\._target_ = .* torch\.optim\.optimizer\.Optimizer subclass"):
        optimizer_class({"_target_": target})
    assert called == []


def test_frozen_parameters_stay_out():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1})
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model[1].parameters()}
