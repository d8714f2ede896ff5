"""A custom TensorFlow training loop with GradientTape and hand-written losses."""

import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import backend as K

inputs = keras.Input((784,))
hidden = keras.layers.Dense(128, activation="relu")(inputs)
outputs = keras.layers.Dense(10, activation="softmax")(hidden)
model = keras.Model(inputs=inputs, outputs=outputs)
loss_fn = keras.losses.CategoricalCrossentropy()
optimizer = keras.optimizers.Adam(1e-3)
keras.mixed_precision.set_global_policy("mixed_bfloat16")


@tf.function
def train_step(x, y):
    with tf.GradientTape() as tape:
        probs = model(x, training=True)
        loss = loss_fn(y, probs)  # expect: XA104
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss


def hand_written(logits, labels):
    p = tf.nn.softmax(logits)
    xent = -tf.reduce_sum(labels * tf.math.log(p), axis=-1)  # expect: XA101
    safe_p = tf.clip_by_value(p, 1e-7, 1.0)
    clipped = -tf.reduce_sum(labels * tf.math.log(safe_p), axis=-1)  # expect: XA103
    shifted = -tf.reduce_sum(labels * tf.math.log(p + 1e-9), axis=-1)  # expect: XA105
    direct = tf.math.log(tf.nn.softmax(logits, axis=-1))  # expect: XA101
    lse = tf.math.log(tf.reduce_sum(tf.exp(logits), axis=-1))  # expect: XA106
    backend = K.log(K.softmax(logits))  # expect: XA101
    return xent, clipped, shifted, direct, lse, backend


def stable(logits, labels, grads):
    # Gradient clipping is not a clip of probabilities; log_softmax and the fused loss are stable.
    grads = [tf.clip_by_value(g, -1.0, 1.0) for g in grads]
    log_p = tf.nn.log_softmax(logits)
    fused = tf.nn.softmax_cross_entropy_with_logits(labels, logits)
    variance_term = 0.5 * tf.math.log(tf.math.reduce_variance(logits) + 1e-6)
    return grads, log_p, fused, variance_term


def doubled(logits, labels):
    return tf.nn.softmax_cross_entropy_with_logits(labels, tf.nn.softmax(logits))  # expect: XA102
