"""Two reference points quoted in the README's ODE-Net section (not part of the library).

    python results/odenet/diagnostics.py

1. Linear least squares (ridge 0.1, one-hot targets) on raw Fashion-MNIST pixels: test accuracy.
2. A plain 3-conv CNN (3x3/1, 4x4/2, 4x4/2 convs, 64 channels, ReLU, mean pool, linear; no
   normalisation), Adam 1e-3, batch 128, no augmentation, outside the experiment harness:
   accuracy on the first 5,000 training images (held out) after 100, 200 and 300 steps.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ode_jax.data import DEFAULT_IDX_DIR, load_idx_dataset


def linear_least_squares(d) -> float:
    x = d.train_images.reshape(len(d.train_images), -1).astype(np.float64) / 255
    xt = d.test_images.reshape(len(d.test_images), -1).astype(np.float64) / 255
    a, at = np.c_[x, np.ones(len(x))], np.c_[xt, np.ones(len(xt))]
    w = np.linalg.solve(a.T @ a + 1e-1 * np.eye(a.shape[1]), a.T @ np.eye(10)[d.train_labels])
    return float((np.argmax(at @ w, 1) == d.test_labels).mean())


def plain_cnn(d, steps=300, every=100):
    to_x = lambda imgs: jnp.asarray(imgs[:, :, :, None].astype(np.float32) / 255)  # noqa: E731
    x, y = to_x(d.train_images[5000:]), jnp.asarray(d.train_labels[5000:])
    xv, yv = to_x(d.train_images[:5000]), jnp.asarray(d.train_labels[:5000])

    def conv(x, w, s=1, p=0):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), dimension_numbers=dims)

    def uniform(key, shape, fan_in):
        b = 1 / np.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -b, b)

    k = jax.random.split(jax.random.key(0), 4)
    params = dict(
        w1=uniform(k[0], (3, 3, 1, 64), 9),
        w2=uniform(k[1], (4, 4, 64, 64), 1024),
        w3=uniform(k[2], (4, 4, 64, 64), 1024),
        wl=uniform(k[3], (64, 10), 64),
        bl=jnp.zeros(10),
    )

    def logits(p, x):
        x = jax.nn.relu(conv(x, p["w1"]))
        x = jax.nn.relu(conv(x, p["w2"], 2, 1))
        x = jax.nn.relu(conv(x, p["w3"], 2, 1))
        return x.mean((1, 2)) @ p["wl"] + p["bl"]

    opt = optax.adam(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, key):
        i = jax.random.randint(key, (128,), 0, x.shape[0])

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits(p, x[i]), y[i]).mean()

        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    t0 = time.time()
    for n in range(1, steps + 1):
        params, state = step(params, state, jax.random.fold_in(jax.random.key(1), n))
        if n % every == 0:
            acc = float((jnp.argmax(logits(params, xv), -1) == yv).mean())
            print(f"plain CNN step {n}: held-out accuracy {acc:.4f} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    data = load_idx_dataset(DEFAULT_IDX_DIR, 10)
    print(f"linear least squares: test accuracy {linear_least_squares(data):.4f}")
    plain_cnn(data)
