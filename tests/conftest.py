import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
