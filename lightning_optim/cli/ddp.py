"""Lightning's DDP launcher inside a Hydra multirun: one job per sweep point, all ranks in its directory.

Lightning's subprocess launcher starts ranks > 0 by re-running ``sys.argv`` with ``hydra.run.dir`` set to
``HydraConfig.run.dir`` (Lightning issues #11300, #15737, #18175). Inside ``-m`` that argv is the whole sweep, and
``run.dir`` is not the job's directory: every other rank starts the sweep again in a second multirun directory.
And after a job, the process keeps its process group and the rank variables DDP put in ``os.environ``, so the
next job believes its ranks are launched externally and waits for them forever. :func:`sweep_job` fixes all three
around one job; outside a multirun it only tidies up. The launcher itself stays Lightning's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

__all__ = ["sweep_job"]


@contextmanager
def sweep_job() -> Iterator[None]:
    """Run one job: ranks Lightning starts re-run this job alone, in its directory; the process is left clean."""
    environment = dict(os.environ)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        config = HydraConfig.get()
        sys.argv = [sys.argv[0], *config.overrides.task]
        with read_write(config.run):  # type: ignore[arg-type]  # typed as Hydra's dataclass, a DictConfig at run time
            config.run.dir = config.runtime.output_dir
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
