"""tunedml: find the CCE + metric-learning loss that fine-tunes an encoder best, per dataset."""

__version__ = "0.1.0"
