import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mri_prior():
    import invsolve as inv

    return inv.load_prior("mri-brain")


@pytest.fixture(scope="session")
def brain_test_images():
    """Two held-out MNI slab slices (never trained on), complex (2, 1, 64, 64)."""
    from invsolve.data.mri import heldout_slices

    x, names = heldout_slices(64, n=16)
    return x[[2, 10]], [names[2], names[10]]
