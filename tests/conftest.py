import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet_lightning_hints():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        yield
