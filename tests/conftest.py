import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


# Slow cases are marked where the test is parametrised (tests/slow.py), never chosen here by name:
# tests/test_suite_markers.py fails if a conftest picks tests by name again.
