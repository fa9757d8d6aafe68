"""Generic fixtures shared by the test suite."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so tolerances and statistics are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def write_digit_pngs():
    """`write(folder, n)`: the first n of scikit-learn's real digits as 24x24 PNGs `d0.png`, ... in `folder` (another
    size than the tiny models' 16, so the reader's resize is exercised); returns the folder."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    def write(folder, n: int, size: int = 24):
        digits = load_digits()
        for i in range(n):
            Image.fromarray((digits.images[i] * 15).astype(np.uint8)).resize((size, size)).save(folder / f"d{i}.png")
        return folder

    return write
