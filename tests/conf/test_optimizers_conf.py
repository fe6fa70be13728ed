"""``optimizers=gan``: the Hydra group for several named optimizers, composed, built and previewed."""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_optim import OptimConfigError
from lightning_optim.cli.common import compose_optim_config, instantiate_model
from lightning_optim.cli.schedule import step_learning_rates
from lightning_optim.config.preview import preview_learning_rates
from tests.cli.apps import run_app
from tests.cli.test_schedule import PNG_MAGIC, printed_rows

# The GAN-shaped test model in place of a demo model, on the full-batch quadratic data: one batch per epoch.
GAN_MODEL = ["optimizers=gan", "model=quadratic_mlp", "model._target_=tests.models.GAN", "~model.hidden"]
GAN_RUN = [*GAN_MODEL, "data=quadratic", "trainer.max_epochs=20"]


def composed(*overrides: str) -> dict:
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        return compose_optim_config(compose(config_name="train", overrides=list(overrides)))


def test_the_gan_group_gives_two_named_adams_with_warmup() -> None:
    config = composed("optimizers=gan")
    assert list(config) == ["optimizers", "resume"]
    assert list(config["optimizers"]) == ["generator", "discriminator"]
    generator = config["optimizers"]["generator"]
    assert generator["params"] == r"^generator\."
    assert (generator["optimizer"]["name"], generator["optimizer"]["lr"]) == ("adam", 2e-4)
    assert generator["scheduler"] == {"name": "warmup_constant", "warmup_steps": 10, "interval": "step"}


@pytest.mark.slow
def test_each_optimizer_takes_the_groups_files_and_overrides() -> None:
    config = composed(
        "optimizers=gan",
        "optimizer@optimizers.discriminator.optimizer=sgd",
        "optimizers.discriminator.optimizer.lr=0.1",
        "scheduler@optimizers.generator.scheduler=warmup_cosine",
    )
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=GAN_MODEL)
    model = instantiate_model(cfg.model, config)
    assert model.optimizer_names == ("generator", "discriminator")
    assert model.optim_config["optimizers"]["discriminator"]["optimizer"]["name"] == "sgd"
    assert model.optim_config["optimizers"]["generator"]["scheduler"]["name"] == "warmup_cosine"


def test_a_single_optimizer_section_beside_the_named_ones_is_refused() -> None:
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*GAN_MODEL, "+optimizer.name=adam"])
    with pytest.raises(OptimConfigError, match=re.escape("optim_config has both 'optimizers' and 'optimizer'")):
        instantiate_model(cfg.model, compose_optim_config(cfg))


def test_the_schedule_preview_is_per_optimizer() -> None:
    with initialize_config_module("lightning_optim.conf", version_base="1.3"):
        cfg = compose(config_name="schedule", overrides=GAN_RUN)
    preview, config = step_learning_rates(cfg, 3, "generator")
    assert preview.total_steps == 20
    model = instantiate_model(cfg.model, config)
    assert preview.lrs["default"] == [
        preview_learning_rates(model, config, 20, optimizer="generator")["default"][step] for step in preview.steps
    ]
    assert preview.lrs["default"][:3] == [0.0, 2e-5, 4e-5]
    with pytest.raises(OptimConfigError, match=re.escape("several optimizers (generator, discriminator)")):
        step_learning_rates(cfg, 3)


def test_the_schedule_app_draws_one_png_per_optimizer(tmp_path) -> None:
    where = [f"out={tmp_path / 'lr.png'}", f"hydra.run.dir={tmp_path}"]
    stdout = run_app("lightning_optim.cli.schedule", *GAN_RUN, *where, cwd=tmp_path)
    for name in ("generator", "discriminator"):
        assert (tmp_path / f"lr-{name}.png").read_bytes().startswith(PNG_MAGIC)
    tables = printed_rows(stdout)
    assert set(tables) == {"generator/default", "discriminator/default"}
    assert tables["generator/default"]["final"] == (19, 2e-4)


def test_naming_an_optimizer_of_a_single_optimizer_config_is_refused() -> None:
    config = {"optimizer": {"name": "sgd", "lr": 0.1}}
    with pytest.raises(OptimConfigError, match=re.escape("optimizer='generator' names one of several optimizers")):
        preview_learning_rates(torch.nn.Linear(2, 1), config, 4, optimizer="generator")
