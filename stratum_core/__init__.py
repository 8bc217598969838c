"""stratum: turn a folder of images into a training-ready, multi-modal dataset."""

__version__ = "0.1.0"
