"""``xentaudit.keras.AuditCallback``: the training callback (``xentaudit/keras_callback.py``)."""

from xentaudit.keras_callback import AuditCallback
from xentaudit.training import EpochRecord

__all__ = ["AuditCallback", "EpochRecord"]
