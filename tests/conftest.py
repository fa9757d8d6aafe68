"""Generic fixtures shared by the test suite."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so tolerances and statistics are reproducible."""
    torch.manual_seed(0)
