"""``xentaudit.keras.AuditCallback``: the training callback (``xentaudit/keras_callback.py``)."""

from xentaudit.keras_callback import AuditCallback, EpochRecord

__all__ = ["AuditCallback", "EpochRecord"]
