"""Test-wide settings: offline, quiet, small, CPU."""

import os
import tempfile

# Never reach the network from tests: W&B stays local, Hugging Face hub lookups fail fast.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
# An empty hub cache: weights a developer has cached must not turn the "weights unavailable offline" tests green
# or red depending on the machine.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="lwtakit-test-hf-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("LWTAKIT_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


@pytest.fixture
def mnist_path():
    """Path to the real MNIST .npz beside the repo (skips with the reason when it is absent)."""
    path = os.path.join(SHARED_DATA, "mnist.npz")
    if not os.path.exists(path):
        pytest.skip(f"real MNIST not found at {path}; set LWTAKIT_SHARED_DATA")
    return path
