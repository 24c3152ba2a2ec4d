"""mvu: an open neural-inference accelerator and its host software."""

from .config import HardwareConfig

__all__ = ["HardwareConfig"]
__version__ = "0.1.0"
