"""Copy this file into your test suite: xentaudit checks *your* cross-entropy, in every dtype,
from small logits to huge ones, eagerly and inside tf.function, against the exact loss and
gradient.

    pip install xentaudit && pytest test_my_loss.py
"""

import pytest
import tensorflow as tf

from xentaudit.testing import assert_stable


def my_loss(labels, logits):
    """Your loss: one-hot labels and logits (rows x classes) -> one loss per row."""
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def naive_loss(labels, logits):
    """What not to write: log(softmax(x)) with an unshifted exp."""
    probs = tf.exp(logits) / tf.reduce_sum(tf.exp(logits), axis=-1, keepdims=True)
    return -tf.reduce_sum(labels * tf.math.log(probs), axis=-1)


def test_my_loss_is_stable():
    # float16, bfloat16, float32, float64; logit scales 0.1 to 1e3; four input patterns
    assert_stable(my_loss)


def test_a_naive_loss_is_caught():
    with pytest.raises(AssertionError, match="not numerically stable"):
        assert_stable(naive_loss)


# The plugin's fixture: the same call, its defaults set by the marker (on a test, a class, or a
# whole module with pytestmark = pytest.mark.xentaudit(...)).
@pytest.mark.xentaudit(dtypes=["float32", "bfloat16"], scales="0.1:100:7", fail_on="nan,inf")
def test_my_loss_in_mixed_precision(xentaudit):
    sweep = xentaudit(my_loss)  # the xentaudit.Sweep, for assertions of your own
    assert {cell.dtype for cell in sweep.cells} == {"float32", "bfloat16"}
