"""difflux_ref: the PyTorch reference of the difflux U-Net (models/UNET.md),
the model-file reader/writer (models/FORMAT.md), an exporter for training
checkpoints and the generator of the C engine's test fixtures.

Only torch, numpy and the standard library are used.
"""

from .modelfile import load_model, load_tensors, save_model, save_tensors
from .unet import UNet, check_unet_config, config_json, unet_section

__all__ = [
    "UNet",
    "check_unet_config",
    "config_json",
    "unet_section",
    "load_model",
    "load_tensors",
    "save_model",
    "save_tensors",
]
