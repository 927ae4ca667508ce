"""MAD's saliency pass (Lee, Kim, Ro, CVPR 2022; ByungKwanLee/Masking-Adversarial-Damage).

Per batch of adversarial examples (BatchNorm in inference mode throughout, as the original's
`net.eval()`):

1. a real-valued mask softplus(m) per weight, m reset so that softplus(m) = 1, is optimised for
   `steps` Adam steps (lr 0.1, 20 steps in the original) on the cross-entropy of the adversarial batch,
   m clamped after each step so that softplus(m) stays in [1e-4, 1] (`SoftMasks`);
2. with the optimised masks in place, block-wise K-FAC statistics of every pruned layer: A from the
   layer inputs (conv: the unfolded patches, `tf.image.extract_patches`) and the diagonal of G from the
   gradients of the batch-mean loss at the layer outputs, scaled as the original's `ComputeCovA/G`:

       dense:  A = a^T a / B,            G_ii = B * sum_b g_bi^2
       conv:   A = p^T p / (B * S^2),    G_ii = B * S * sum_{b,pos} g_{b,pos,i}^2   (S = out_h * out_w)

3. the second-order saliency of removing the masked part dW = W - W * softplus(m):

       S_ij = 1/2 * G_ii * dW_ij * (dW_i A)_j     (i: output unit, j: input / patch entry)

Saliencies are averaged over batches (`SaliencyAverage`) and `saliency_masks` prunes the lowest
globally over all layers but the last; the last (dense) layer is pruned per output unit.

Nothing is approximated: (dW_i A) for all i is A @ dW in Keras' (inputs, outputs) layout, and where
forming the n x n matrix A costs more than it saves (`_explicit_is_cheaper`) it is computed as
p^T (p @ dW) / (B S^2), the same number without A. Biases are neither masked nor pruned (docs/methods.md);
the original also masks and prunes them, which adds a bias column to A whose dW is zero here.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from frep_tf import losses
from frep_tf.config import Config
from frep_tf.layers.reparam import ReparamConv2D
from frep_tf.methods import masks as masks_lib
from frep_tf.methods.base import Method, Stage, pretrain_then

SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(SOFTPLUS_ONE) == 1
SOFTPLUS_FLOOR = math.log(math.expm1(1e-4))  # softplus(SOFTPLUS_FLOOR) == 1e-4, the original's f_inv(0)


# -- K-FAC statistics -----------------------------------------------------------------------------
def input_patches(layer, x):
    """The rows `a` the layer multiplies by its kernel reshaped to (n, out): (P, n) with n = kh*kw*in
    for a conv (one row per output position, ordered like the kernel) and n = in for a dense layer."""
    x = tf.convert_to_tensor(x, tf.float32)
    if isinstance(layer, ReparamConv2D):
        kh, kw = layer.kernel_size
        sh, sw = layer.strides
        x = tf.image.extract_patches(
            x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, 1, 1, 1], padding=layer.padding.upper()
        )
    return tf.reshape(x, [-1, x.shape[-1]])


def _positions(layer, x, outputs):
    """(B, S): batch size and output positions per example (S = 1 for a dense layer)."""
    batch = tf.shape(x)[0]
    if isinstance(layer, ReparamConv2D):
        return batch, tf.shape(outputs)[1] * tf.shape(outputs)[2]
    return batch, tf.constant(1)


def input_factor(layer, x, outputs):
    """K-FAC's A for one batch (n x n): a^T a / B (dense), p^T p / (B S^2) (conv)."""
    a = input_patches(layer, x)
    batch, positions = _positions(layer, x, outputs)
    scale = tf.cast(batch * positions * positions, a.dtype)
    return tf.matmul(a, a, transpose_a=True) / scale


def input_factor_times(layer, x, outputs, delta):
    """A @ delta for `delta` of shape (n, out), without forming A when that is cheaper."""
    a = input_patches(layer, x)
    rows, n = a.shape[0], a.shape[1]
    out = delta.shape[-1]
    if _explicit_is_cheaper(rows, n, out):
        return tf.matmul(input_factor(layer, x, outputs), delta)
    batch, positions = _positions(layer, x, outputs)
    scale = tf.cast(batch * positions * positions, a.dtype)
    return tf.matmul(a, tf.matmul(a, delta), transpose_a=True) / scale


def _explicit_is_cheaper(rows, n, out) -> bool:
    if rows is None:
        return False
    return rows * n * n + n * n * out <= 2 * rows * n * out


def output_factor_diag(layer, x, outputs, grads):
    """The diagonal of K-FAC's G for one batch, from d(batch-mean loss)/d(layer outputs)."""
    g = tf.reshape(tf.convert_to_tensor(grads, tf.float32), [-1, grads.shape[-1]])
    batch, positions = _positions(layer, x, outputs)
    return tf.cast(batch * positions, g.dtype) * tf.reduce_sum(tf.square(g), axis=0)


def saliency(delta, a_delta, g_diag):
    """S_ij = 1/2 G_ii dW_ij (dW_i A)_j in Keras' (n, out) layout: columns are the output units i."""
    return 0.5 * g_diag[None, :] * delta * a_delta


def layer_saliency(layer, x, outputs, grads, delta_kernel):
    """MAD's saliency of one layer (kernel-shaped) from its inputs, outputs, output gradients and dW."""
    shape = delta_kernel.shape
    delta = tf.reshape(tf.convert_to_tensor(delta_kernel, tf.float32), [-1, shape[-1]])
    s = saliency(delta, input_factor_times(layer, x, outputs, delta), output_factor_diag(layer, x, outputs, grads))
    return tf.reshape(s, shape)


# -- soft masks -------------------------------------------------------------------------------------
class SoftMasks:
    """softplus(m) per weight of `layers`, optimised by Adam on the loss of one batch.

    The layers' own mask variables carry binary_mask * softplus(m) during the pass (gradients reach m
    through them), and `restore` puts the binary masks back. Adam as torch.optim.Adam (betas 0.9,
    0.999, eps 1e-8) with fresh moments per batch, as the original builds a new optimizer per batch.
    """

    def __init__(self, network, layers, *, steps: int = 20, learning_rate: float = 0.1):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"`steps` must be an integer >= 0. Received: steps={steps!r}")
        self.network = network
        self.layers = list(layers)
        self.steps = steps
        self.learning_rate = float(learning_rate)
        shapes = [tuple(layer.mask.shape) for layer in self.layers]
        self.m = [tf.Variable(tf.fill(s, SOFTPLUS_ONE), trainable=False) for s in shapes]
        self.first = [tf.Variable(tf.zeros(s), trainable=False) for s in shapes]
        self.second = [tf.Variable(tf.zeros(s), trainable=False) for s in shapes]
        self.binary = [tf.Variable(tf.convert_to_tensor(layer.mask), trainable=False) for layer in self.layers]
        self._optimize = tf.function(self._optimize_eager)

    def values(self) -> list:
        return [tf.nn.softplus(m) for m in self.m]

    def restore(self) -> None:
        for layer, b in zip(self.layers, self.binary, strict=True):
            layer.mask.assign(b)

    def _set_masks(self):
        for layer, b, m in zip(self.layers, self.binary, self.m, strict=True):
            layer.mask.assign(b * tf.nn.softplus(m))

    def _optimize_eager(self, x, y):
        for m, f, s in zip(self.m, self.first, self.second, strict=True):
            m.assign(tf.fill(tf.shape(m), SOFTPLUS_ONE))
            f.assign(tf.zeros_like(f))
            s.assign(tf.zeros_like(s))
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step_index in tf.range(1, self.steps + 1):
            self._set_masks()
            carriers = [layer.mask.value for layer in self.layers]
            with tf.GradientTape() as tape:
                tape.watch(carriers)
                loss = tf.reduce_mean(losses.cross_entropy(self.network(x, training=False), y))
            mask_grads = tape.gradient(loss, carriers)
            t = tf.cast(step_index, tf.float32)
            for m, f, s, b, g in zip(self.m, self.first, self.second, self.binary, mask_grads, strict=True):
                g = g * b * tf.sigmoid(m)
                f.assign(beta1 * f + (1 - beta1) * g)
                s.assign(beta2 * s + (1 - beta2) * tf.square(g))
                step = self.learning_rate * (f / (1 - beta1**t)) / (tf.sqrt(s / (1 - beta2**t)) + eps)
                m.assign(tf.clip_by_value(m - step, SOFTPLUS_FLOOR, SOFTPLUS_ONE))
        self._set_masks()
        return tf.constant(True)

    def optimize(self, x, y) -> list:
        """Reset and optimise the masks on (x, y); they stay in the layers until `restore`."""
        for b, layer in zip(self.binary, self.layers, strict=True):
            b.assign(tf.convert_to_tensor(layer.mask))  # the binary masks as they are now
        self._optimize(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
        return self.values()


# -- one batch ----------------------------------------------------------------------------------------
class SaliencyPass:
    """MAD's saliency of every layer in `layers` for one adversarial batch at a time."""

    def __init__(self, network, layers, *, steps: int = 20, learning_rate: float = 0.1):
        self.network = network
        self.layers = list(layers)
        self.soft = SoftMasks(network, self.layers, steps=steps, learning_rate=learning_rate)
        # One forward pass yields every layer's input and output, so output gradients are exact.
        self.probe = keras.Model(
            network.inputs,
            [layer.input for layer in self.layers] + [layer.output for layer in self.layers] + [network.output],
        )

    def batch(self, x_adv, y) -> list:
        """Kernel-shaped saliencies of one batch (x_adv already perturbed, y integer labels)."""
        x_adv = tf.convert_to_tensor(x_adv, tf.float32)
        y = tf.convert_to_tensor(y)
        dense_kernels = [tf.convert_to_tensor(layer.fused_kernel()) for layer in self.layers]
        try:
            soft = self.soft.optimize(x_adv, y)
            return self._saliencies(x_adv, y, dense_kernels, soft)
        finally:
            self.soft.restore()

    def _saliencies(self, x, y, dense_kernels, soft):
        n = len(self.layers)
        with tf.GradientTape() as tape:
            outs = self.probe(x, training=False)
            inputs, outputs = outs[:n], outs[n : 2 * n]
            loss = tf.reduce_mean(losses.cross_entropy(outs[-1], y))
        grads = tape.gradient(loss, outputs)
        found = []
        for i, layer in enumerate(self.layers):
            delta = dense_kernels[i] - dense_kernels[i] * soft[i]
            found.append(layer_saliency(layer, inputs[i], outputs[i], grads[i], delta))
        return found


@keras.saving.register_keras_serializable(package="frep_tf")
class SaliencyAverage(keras.layers.Layer):
    """The running mean of per-batch saliencies, in variables so that a resumed pass continues."""

    def __init__(self, kernel_shapes, *, layer_names=None, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.kernel_shapes = [tuple(int(d) for d in s) for s in kernel_shapes]
        names = layer_names or [f"layer{i}" for i in range(len(self.kernel_shapes))]
        self.layer_names = list(names)
        self.sums = [
            self.add_weight(name=f"saliency_{n}", shape=s, initializer="zeros", trainable=False)
            for n, s in zip(self.layer_names, self.kernel_shapes, strict=True)
        ]
        self.batches = self.add_weight(name="batches", shape=(), dtype="int64", initializer="zeros", trainable=False)
        self.built = True

    def add(self, saliencies) -> None:
        for total, s in zip(self.sums, saliencies, strict=True):
            total.assign_add(s)
        self.batches.assign_add(1)

    def mean(self) -> list[np.ndarray]:
        count = max(int(self.batches.numpy()), 1)
        return [np.asarray(total) / count for total in self.sums]

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(kernel_shapes=self.kernel_shapes, layer_names=self.layer_names)
        return config


# -- pruning ------------------------------------------------------------------------------------------
def saliency_masks(saliencies, sparsity: float, min_density: float = 0.0) -> list[np.ndarray]:
    """Keep the highest saliencies: globally over all layers but the last (exact count), and per output
    unit (kernel column) in the last layer, as the original's `_global_remove_weight`.

    `min_density` (--min_layer_density) first reserves the top ceil(min_density * size) entries of every
    body layer, taken from the global budget (as FReP's global ranking does), then ranks the rest."""
    masks_lib.check_sparsity(sparsity)
    saliencies = [np.asarray(s, np.float64) for s in saliencies]
    body, head = saliencies[:-1], saliencies[-1]
    found = []
    if body:
        flat = np.concatenate([s.ravel() for s in body])
        keep = masks_lib.keep_count(flat.size, sparsity, minimum=0)
        mask = np.zeros(flat.size, np.float32)
        if min_density > 0:
            start = 0
            for s in body:
                reserved = min(s.size, int(np.ceil(min_density * s.size)))
                top = np.argsort(-s.ravel(), kind="stable")[:reserved]
                mask[start + top] = 1.0
                start += s.size
        rest = keep - int(mask.sum())
        if rest > 0:
            order = np.argsort(-flat, kind="stable")
            mask[order[mask[order] == 0][:rest]] = 1.0
        start = 0
        for s in body:
            found.append(mask[start : start + s.size].reshape(s.shape))
            start += s.size
    columns = head.reshape(-1, head.shape[-1])
    keep = masks_lib.keep_count(columns.shape[0], sparsity)
    head_mask = np.zeros(columns.shape, np.float32)
    order = np.argsort(-columns, axis=0, kind="stable")[:keep]
    np.put_along_axis(head_mask, order, 1.0, axis=0)
    found.append(head_mask.reshape(head.shape))
    return found


# -- the method -----------------------------------------------------------------------------------------
class MAD(Method):
    """pretrain -> saliency -> finetune (Table V: 100 + 1 + 139). The saliency pass goes over the
    training set once (one epoch of data, far more than one epoch of compute: PGD plus --mad_mask_steps
    Adam steps on the soft mask per batch), so Table V's 240 = 100 + 1 pass + 139. Fine-tuning uses MART."""

    name = "mad"
    finetune_epochs = 139

    def plan(self, cfg: Config) -> list[Stage]:
        saliency = dict(name="saliency", epochs=1, kind="saliency")
        return pretrain_then(cfg, saliency, self.finetune_epochs, objective="mart", trades_beta=cfg.method.mad_beta)

    def state(self, cfg: Config, network) -> dict:
        from frep_tf.layers.reparam import reparam_layers

        layers = reparam_layers(network)
        average = SaliencyAverage(
            [tuple(layer.mask.shape) for layer in layers], layer_names=[layer.name for layer in layers], name="saliency"
        )
        return {"saliency": average}

    def begin(self, stage: Stage, model, cfg: Config):
        if stage.name != "finetune":
            return None
        from frep_tf.training.pruning import check_layer_densities, layer_densities

        sparsity, floor = cfg.prune.sparsity, cfg.prune.min_layer_density
        masks = saliency_masks(model.method_state["saliency"].mean(), sparsity, min_density=floor)
        check_layer_densities(layer_densities([layer.name for layer in model.reparam], masks), sparsity, floor)
        masks_lib.apply_masks(model.reparam, masks)
        return model.reparam

    def pass_batches(self, stage: Stage, cfg: Config, steps_per_epoch: int) -> int:
        return cfg.method.mad_batches or steps_per_epoch

    def pass_step(self, stage: Stage, model, cfg: Config):
        """One batch of the saliency pass: PGD examples (BatchNorm in inference mode), the soft mask
        optimised on them, then the second-order saliency, added to the running mean."""
        from frep_tf.attacks.pgd import pgd

        avg = model.method_state["saliency"]
        pass_ = SaliencyPass(
            model.network, model.reparam, steps=cfg.method.mad_mask_steps, learning_rate=cfg.method.mad_mask_lr
        )
        t = cfg.train
        network_fn = lambda x: model.network(x, training=False)  # noqa: E731

        def step(i, x, y):
            x_adv = pgd(
                network_fn,
                x,
                y,
                eps=t.epsilon,
                steps=t.pgd_steps,
                step_size=t.pgd_step_size,
                seed=cfg.run.seed * 100003 + i,
            )
            avg.add(pass_.batch(x_adv, y))

        return step

    def run_pass(self, stage: Stage, model, splits, steps_per_epoch: int, cfg: Config, verbose: int) -> None:
        """`pass_step` on every batch of the pass, the saliency sums started from zero."""
        avg = model.method_state["saliency"]
        for total in avg.sums:
            total.assign(tf.zeros_like(total))
        avg.batches.assign(0)
        batches = self.pass_batches(stage, cfg, steps_per_epoch)
        step = self.pass_step(stage, model, cfg)
        bar = keras.utils.Progbar(batches, verbose=1 if verbose == 1 else 0, unit_name="batch")
        for i, (x, y) in enumerate(splits.train_from(stage.start).take(batches)):
            step(i, x, y)
            bar.update(i + 1)
        if verbose == 2:
            print(f"saliency: {int(avg.batches.numpy())} batches", flush=True)
