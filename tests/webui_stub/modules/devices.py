"""``modules.devices``: only ``cpu``, where schedulers build their sigmas."""
import torch

cpu = torch.device("cpu")
