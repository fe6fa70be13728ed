"""README's ``lightning-optim-train optimizers=gan model=<your GAN>`` on a small GAN: two named optimizers, manual
optimization, the default trainer otherwise.

The GAN below is the user's: the app imports it as ``tests.cli.test_gan.PointGAN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from lightning_optim import OptimMixin
from tests.cli.apps import TINY, run_app

TRAIN = "lightning_optim.cli.train"


class PointGAN(OptimMixin, L.LightningModule):
    """A GAN of the points ``(x, y)`` of ``data=quadratic``, in Lightning's GAN example's shape: a ``generator``
    and a ``discriminator`` submodule, manual optimization, each scheduler stepped after its optimizer."""

    def __init__(self, optim_config: Mapping[str, Any], latent: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.optim_config = optim_config

    def _discriminator_loss(self, real: torch.Tensor) -> torch.Tensor:
        fake = self.generator(torch.randn(len(real), self.latent, device=real.device)).detach()
        logits = self.discriminator(torch.cat([real, fake]))
        labels = torch.cat([torch.ones(len(real), 1), torch.zeros(len(fake), 1)]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real = torch.cat(batch, dim=1)
        opt_g, opt_d = self.optimizers()
        sch_g, sch_d = self.lr_schedulers()
        d_loss = self._discriminator_loss(real)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        sch_d.step()
        fake = self.generator(torch.randn(len(real), self.latent, device=real.device))
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones(len(real), 1).to(fake))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        sch_g.step()
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss})

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/d_loss", self._discriminator_loss(torch.cat(batch, dim=1)))


def test_optimizers_gan_trains_a_gan_with_the_default_trainer(tmp_path):
    run_dir = tmp_path / "run"
    stdout = run_app(
        TRAIN,
        *TINY,
        "optimizers=gan",
        "trainer.max_epochs=4",  # 12 batches: past warmup_constant's 10 warmup steps
        "optimizers.discriminator.optimizer.lr=1e-3",
        "model._target_=tests.cli.test_gan.PointGAN",
        "~model.width",
        "~model.hidden",
        "data=quadratic",
        "data.batch_size=64",
        "metric=val/d_loss",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.gradient_clip_val is None
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 24  # 12 batches, two optimizer steps each
    lrs = [group["lr"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]]
    assert lrs == pytest.approx([2e-4, 1e-3])  # generator, discriminator: each its own lr after the warmup
    assert sorted(checkpoint["optim_config"]["optimizers"]) == ["discriminator", "generator"]
    assert "val/d_loss = " in stdout
