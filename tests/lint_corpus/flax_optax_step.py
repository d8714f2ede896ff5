"""A flax/optax training step: the double softmax and its stable form."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax
from jax import nn


class MLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(10)(fnn.relu(fnn.Dense(128)(x)))


model = MLP()
tx = optax.adam(1e-3)


def loss_fn(params, x, labels):
    logits = model.apply(params, x)
    probs = jax.nn.softmax(logits)
    bad = optax.softmax_cross_entropy(probs, labels).mean()  # expect: XA102
    handmade = -jnp.sum(labels * jnp.log(nn.softmax(logits)), axis=-1)  # expect: XA101
    lse = jnp.log(jnp.sum(jnp.exp(logits), axis=-1))  # expect: XA106
    clipped = -jnp.sum(labels * jnp.log(jnp.clip(probs, 1e-7, 1.0)), axis=-1)  # expect: XA103
    good = optax.softmax_cross_entropy(logits, labels).mean() + jax.nn.logsumexp(logits).sum()
    return good, (bad, handmade, lse, clipped)


@jax.jit
def train_step(params, opt_state, x, labels):
    (loss, _aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, labels)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss
