"""A Keras classifier trained with fit: one softmax model compiled with a logits loss (XA102),
one compiled the stable way, probabilities used only to report accuracy."""

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

x_train = np.random.rand(256, 32).astype("float32")
y_train = np.random.randint(0, 10, 256)

model = keras.Sequential(
    [
        keras.Input((32,)),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ]
)
model.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),  # expect: XA102
    metrics=["accuracy"],
)
model.fit(x_train, y_train, epochs=2, batch_size=32)

# The stable way: logits out, from_logits=True, softmax only to report.
logits_model = keras.Sequential(
    [keras.Input((32,)), layers.Dense(64, activation="relu"), layers.Dense(10)]
)
logits_model.compile(
    optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
logits_model.fit(x_train, y_train, epochs=2)
probabilities = tf.nn.softmax(logits_model.predict(x_train), axis=-1)
accuracy = np.mean(np.argmax(probabilities, axis=-1) == y_train)

# A softmax model compiled with a probability loss and trained with fit: Keras recovers the
# logits from the softmax layer's output under the float32 policy, so nothing to flag.
prob_model = keras.Sequential([keras.Input((32,)), layers.Dense(10, activation="softmax")])
prob_model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
prob_model.fit(x_train, y_train, epochs=1)
