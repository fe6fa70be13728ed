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
from torch.utils.data import DataLoader

from lightning_optim.cli.common import (
    CONFIG_PATH,
    app_flag,
    apply_app_settings,
    claimed_run_dir,
    compose_optim_config,
    fresh_command,
    instantiate_model,
    refuse_used_run_dir,
    resume_command,
    saved_step,
)
from lightning_optim.cli.ddp import sweep_job
from lightning_optim.cli.interrupt import InterruptCheckpoint
from lightning_optim.cli.rollback import Rollbacks, RollbackWatch, resolve_rollback, rollback_loader

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group (``callbacks``, ``logger``)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _exit_interrupted(interrupt: InterruptCheckpoint, trainer: L.Trainer) -> SystemExit:
    """Say what survived and how to go on (rank zero); the exit status is ``128 + signum``, as a shell's."""
    signum = signal.Signals(interrupt.signum or signal.SIGTERM)
    if trainer.is_global_zero:
        _report_interruption(signum, interrupt, trainer, HydraConfig.get().overrides.task)
    return SystemExit(128 + signum)


def _report_interruption(
    signum: signal.Signals, interrupt: InterruptCheckpoint, trainer: L.Trainer, overrides: list[str]
) -> None:
    """Log where the stopped run can be resumed from: ``interrupted.ckpt``, or the newest checkpoint if that save
    failed, or a fresh start if there is none."""
    stopped = f"{signum.name} stopped training after step {trainer.global_step}"
    if trainer.state.fn == TrainerFn.VALIDATING:
        log.info(f"{signum.name} stopped the final validation; training had finished ({trainer.global_step} steps)")
        return
    if interrupt.save_error is None:
        checkpoint = interrupt.ckpt_path.resolve()
        log.info(f"{stopped}; checkpoint {checkpoint}")
        log.info(f"resume with: {resume_command(checkpoint, overrides)}")
        return
    log.error(f"{stopped}, but {interrupt.ckpt_path.resolve()} was not saved: {interrupt.save_error}")
    newest = _newest_checkpoint(trainer)
    if newest is None:
        log.info(f"No checkpoint was saved before it; start again in a new directory: {fresh_command(overrides)}")
        return
    log.info(f"The newest checkpoint saved is {newest} (step {saved_step(newest)}); the steps after it are lost")
    log.info(f"resume with: {resume_command(newest, overrides)}")


def _newest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint a checkpoint callback saved (each save is whole: atomic): its ``last.ckpt`` when it
    keeps one, else its best; across several callbacks, the newest file."""
    saved = []
    for callback in trainer.checkpoint_callbacks:
        for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")):
            if path and Path(path).is_file():
                saved.append(Path(path).resolve())
                break
    return max(saved, key=lambda path: path.stat().st_mtime, default=None)


def _has_validation(model: L.LightningModule, datamodule: L.LightningDataModule) -> bool:
    """Whether a final validation can run: the model has a ``validation_step`` and the data a ``val_dataloader``."""
    return is_overridden("validation_step", model) and is_overridden("val_dataloader", datamodule)


def train(cfg: DictConfig) -> float:
    """Fit, validate and report the model the config describes; returns the metric ``cfg.metric``.

    The metric comes from a final validation run; a model without ``validation_step`` (or data without
    ``val_dataloader``) skips it and reports the last value training logged. The run directory is claimed for the
    run: a second run there is refused while this one runs, and a fresh run (``ckpt_path`` null) also refuses a
    directory that holds an earlier run's outputs. SIGTERM or SIGINT during training saves
    ``checkpoints/interrupted.ckpt`` and exits with ``128 + signum``.

    Args:
        cfg: The composed ``train`` config.

    Returns:
        The value of ``cfg.metric`` (default ``val/acc``).
    """
    apply_app_settings(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Ranks > 0 are started by Lightning in rank zero's directory, which rank zero has claimed and checked.
    if rank_zero_only.rank != 0:
        return _fit_and_report(cfg, run_dir)
    with claimed_run_dir(run_dir):
        if cfg.get("ckpt_path") is None:
            refuse_used_run_dir(run_dir)
        return _fit_and_report(cfg, run_dir)


def _fit_and_report(cfg: DictConfig, run_dir: Path) -> float:
    """:func:`train` in its claimed, checked run directory; with ``rollback`` set, fits again from an earlier
    checkpoint after each loss spike (:mod:`lightning_optim.cli.rollback`)."""
    logging.captureWarnings(True)  # warnings reach train.log too, as log records
    spec = resolve_rollback(cfg.get("rollback"))
    rollbacks = None if spec is None else Rollbacks(spec, run_dir)
    loggers = _instantiate_all(cfg.get("logger"))
    ckpt_path = cfg.get("ckpt_path")
    # One job for all the fits: a second Trainer finds the DDP ranks and process group of the first.
    with sweep_job():
        while True:
            L.seed_everything(cfg.seed, workers=True)
            datamodule = instantiate(cfg.data)
            model = instantiate_model(cfg.model, compose_optim_config(cfg))
            interrupt = InterruptCheckpoint(run_dir / "checkpoints")
            callbacks = [*_instantiate_all(cfg.get("callbacks")), interrupt]
            watch = None if rollbacks is None else _watch_rollbacks(cfg, rollbacks, datamodule, callbacks)
            # The rollback stream splits the training data over the ranks itself.
            split = {} if rollbacks is None else {"use_distributed_sampler": False}
            trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **split)
            try:
                trainer.fit(
                    model,
                    datamodule=datamodule,
                    ckpt_path=ckpt_path,
                    weights_only=not app_flag(cfg, "trust_checkpoint"),
                )
                spike = None if watch is None else watch.spike()
                if spike is None:
                    validates = _has_validation(model, datamodule)
                    metrics: dict[str, Any] = (
                        trainer.validate(model, datamodule=datamodule, verbose=False)[0]
                        if validates
                        else dict(trainer.callback_metrics)
                    )
                    break
            except (
                SIGTERMException
            ):  # Lightning raises it for SIGTERM, and for SIGINT once InterruptCheckpoint routed it
                raise _exit_interrupted(interrupt, trainer) from None
            assert rollbacks is not None  # a spike is only watched for with rollback set
            ckpt_path = rollbacks.roll_back(spike, trainer.train_dataloader.batch_sampler, trainer.strategy)
            loggers = rollbacks.resumed_loggers(cfg.get("logger"), loggers)
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


def _watch_rollbacks(
    cfg: DictConfig, rollbacks: Rollbacks, datamodule: L.LightningDataModule, callbacks: list[Any]
) -> RollbackWatch:
    """Add the spike watch and the rollback checkpoints to ``callbacks``, and serve ``datamodule``'s training data
    as the seeded stream less the batches skipped so far."""
    spec = rollbacks.spec
    watch = RollbackWatch(spec, lr_scale=spec.lr_factor ** len(rollbacks.records))
    log_every = cfg.trainer.get("log_every_n_steps") or 50
    callbacks += [watch, spec.checkpoint_callback(rollbacks.checkpoint_dir, log_every)]
    train_dataloader = datamodule.train_dataloader

    def stream() -> DataLoader:
        trainer = datamodule.trainer
        assert trainer is not None  # Lightning attaches itself before it asks for the training data
        loader = train_dataloader()
        return rollback_loader(
            loader, cfg.seed, rollbacks.skipped, watch.position, trainer.world_size, trainer.global_rank
        )

    datamodule.train_dataloader = stream  # type: ignore[method-assign]
    return watch


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    """Console script ``lightning-optim-train``; returns the metric for Hydra's sweepers."""
    return train(cfg)


if __name__ == "__main__":
    main()
