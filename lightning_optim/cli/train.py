"""``lightning-optim-train``: train a demo model with the optimizer and schedule the Hydra config picks.

Examples (shell)::

    lightning-optim-train                                  # digits CNN, Nesterov SGD, warmup + cosine
    lightning-optim-train optimizer=adamw optimizer.lr=3e-3 scheduler=onecycle
    lightning-optim-train -m optimizer=sgd,adamw scheduler=warmup_cosine,plateau
    lightning-optim-train experiment=transformer
    python -m lightning_optim.cli.train --cfg job           # print the composed config
"""

from __future__ import annotations

import logging
import shlex
import signal
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig

from lightning_optim.cli.common import (
    CONFIG_PATH,
    app_flag,
    apply_app_settings,
    compose_optim_config,
    instantiate_model,
    refuse_used_run_dir,
    resume_command,
)
from lightning_optim.cli.ddp import sweep_job
from lightning_optim.cli.interrupt import InterruptCheckpoint

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (``callbacks``, ``logger``)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _exit_interrupted(interrupt: InterruptCheckpoint, trainer: L.Trainer) -> SystemExit:
    """Say where the interrupted run can be resumed from; the exit status is ``128 + signum``, as a shell's."""
    signum = signal.Signals(interrupt.signum or signal.SIGTERM)
    if trainer.is_global_zero and trainer.state.fn == TrainerFn.VALIDATING:
        log.info(f"{signum.name} stopped the final validation; training had finished ({trainer.global_step} steps)")
    elif trainer.is_global_zero:
        checkpoint = interrupt.ckpt_path.resolve()
        log.info(f"{signum.name} stopped training after step {trainer.global_step}; checkpoint {checkpoint}")
        log.info(f"resume with: {resume_command(checkpoint, HydraConfig.get().overrides.task)}")
    return SystemExit(128 + signum)


def _has_validation(model: L.LightningModule, datamodule: L.LightningDataModule) -> bool:
    """Whether a final validation can run: the model has a ``validation_step`` and the data a ``val_dataloader``."""
    return is_overridden("validation_step", model) and is_overridden("val_dataloader", datamodule)


def train(cfg: DictConfig) -> float:
    """Fit, validate and report the model the config describes; returns the metric ``cfg.metric``.

    The metric comes from a final validation run; a model without ``validation_step`` (or data without
    ``val_dataloader``) skips it and reports the last value training logged. A fresh run (``ckpt_path`` null)
    refuses a run directory that holds an earlier run's outputs. SIGTERM or SIGINT during training saves
    ``checkpoints/interrupted.ckpt`` and exits with ``128 + signum``.

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The value of ``cfg.metric`` (default ``val/acc``).
    """
    apply_app_settings(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Ranks > 0 are started by Lightning in rank zero's directory, which rank zero has already checked.
    if cfg.get("ckpt_path") is None and rank_zero_only.rank == 0:
        refuse_used_run_dir(run_dir)
    logging.captureWarnings(True)  # warnings reach train.log too, as log records
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate_model(cfg.model, compose_optim_config(cfg))
    loggers = _instantiate_all(cfg.get("logger"))
    interrupt = InterruptCheckpoint(run_dir / "checkpoints")
    callbacks = [*_instantiate_all(cfg.get("callbacks")), interrupt]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    with sweep_job():
        try:
            trainer.fit(
                model,
                datamodule=datamodule,
                ckpt_path=cfg.get("ckpt_path"),
                weights_only=not app_flag(cfg, "trust_checkpoint"),
            )
            validates = _has_validation(model, datamodule)
            metrics: dict[str, Any] = (
                trainer.validate(model, datamodule=datamodule, verbose=False)[0]
                if validates
                else dict(trainer.callback_metrics)
            )
        except SIGTERMException:  # Lightning raises it for SIGTERM, and for SIGINT once InterruptCheckpoint routed it
            raise _exit_interrupted(interrupt, trainer) from None
    if cfg.metric not in metrics:
        source = "validation" if validates else "training (no validation_step or val_dataloader, so no validation)"
        raise KeyError(f"metric={cfg.metric!r} was not logged by {source}; logged: {sorted(metrics)}")
    value = float(metrics[cfg.metric])
    if trainer.is_global_zero:
        log.info(f"{cfg.metric} = {value:.4f}")
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logdir = Path(logger.save_dir, logger.name or "").resolve()
                log.info(f"tensorboard --logdir {shlex.quote(str(logdir))}")
    return value


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``lightning-optim-train``; returns the metric for Hydra's sweepers."""
    return train(cfg)


if __name__ == "__main__":
    main()
