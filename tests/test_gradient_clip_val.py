"""A negative or non-finite ``gradient_clip_val`` is refused before the first training step."""

import re

import pytest
import torch

from lightning_optim.callbacks import GradNormMonitor
from tests.models import MixinModel, RecordingModel, loader, trainer


@pytest.mark.parametrize("threshold", [-1, -0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("with_mixin", [True, False], ids=["OptimMixin", "GradNormMonitor without the mixin"])
def test_a_bad_threshold_stops_fit_before_any_step(threshold, with_mixin):
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.1}}) if with_mixin else RecordingModel()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    message = (
        f"Trainer(gradient_clip_val={threshold!r}) is not valid. Expected a finite threshold > 0, e.g. 1.0, or 0 / "
        "None for no clipping (a negative threshold flips the sign of the clipped gradients: gradient ascent)."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer(gradient_clip_val=threshold, callbacks=[] if with_mixin else [GradNormMonitor()]).fit(model, loader())
    assert model.lrs == []
    assert all(torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))
