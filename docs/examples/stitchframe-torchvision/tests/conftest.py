from __future__ import annotations

import pytest
import torch
from stitchframe_torchvision import MobileNetOptions, load_mobilenet


@pytest.fixture(scope="session")
def family():
    """MobileNetV3 small and large, randomly initialised, traced at 64x64."""
    torch.manual_seed(0)
    small = MobileNetOptions(img_size=64)
    return [load_mobilenet("mobilenet_v3_small", small), load_mobilenet("mobilenet_v3_large", small)]
