"""``lightning-optim-train``: train a demo model with the optimizer and schedule the Hydra config picks.

Examples (shell)::

    lightning-optim-train                                  # digits CNN, Nesterov SGD, warmup + cosine
    lightning-optim-train optimizer=adamw optimizer.lr=3e-3 scheduler=onecycle
    lightning-optim-train -m optimizer=sgd,adamw scheduler=warmup_cosine,plateau
    lightning-optim-train experiment=transformer
    python -m lightning_optim.cli.train --cfg job           # print the composed config
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from rich.console import Console

from lightning_optim.cli.common import CONFIG_PATH, compose_optim_config
from lightning_optim.cli.ddp import sweep_job


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (``callbacks``, ``logger``)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def train(cfg: DictConfig) -> float:
    """Fit, validate and report the model the config describes; returns the validation metric ``cfg.metric``.

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The value of ``cfg.metric`` (default ``val/acc``) from a final validation run.
    """
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optim_config=compose_optim_config(cfg), _convert_="all")
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=_instantiate_all(cfg.get("callbacks")))
    with sweep_job():
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if cfg.metric not in metrics:
        raise KeyError(f"metric={cfg.metric!r} was not logged by validation; logged: {sorted(metrics)}")
    value = float(metrics[cfg.metric])
    console = Console()
    if trainer.is_global_zero:
        console.print(f"validation accuracy ({cfg.metric}): {value:.4f}", markup=False, highlight=False)
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logdir = Path(logger.save_dir, logger.name or "").resolve()
                console.print(f"tensorboard --logdir {logdir}", markup=False, highlight=False, soft_wrap=True)
    return value


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``lightning-optim-train``; returns the validation metric for Hydra's sweepers."""
    return train(cfg)


if __name__ == "__main__":
    main()
