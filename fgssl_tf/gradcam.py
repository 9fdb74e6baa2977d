"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018), computed
with `tf.GradientTape` on the model's own graph.

The paper's Grad-CAM (docs/paper_fidelity.md, "Grad-CAM": S9, C7) rebuilt the forward pass by hand and so
skipped the generator's global skip, pointed at a layer that no longer existed
after truncation, and fed inputs normalised differently from training. Here the
layer is looked up by name in the model that is evaluated (a clear error lists the
valid names), the gradient flows through the real graph, and images get the
training preprocessing (`fgssl_tf.data.preprocess`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fgssl_tf.errors import FgsslError

METHODS = ("gradcam", "gradcam++")


def file_name_part(text) -> str:
    """`text` (an image or class name) made safe as part of one file name: a '/', a NUL, a
    leading '.' or other separators would make a path, hide the file or fail to open."""
    import re

    safe = re.sub(r"[^\w.+=@,-]+", "_", str(text)).lstrip(".")
    return safe[:80] or "_"


def spatial_layer_names(model: keras.Model) -> list[str]:
    """Layers with a [batch, height, width, channels] output, in graph order (Grad-CAM candidates)."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError):  # never called, or called more than once
            continue
        if isinstance(output, keras.KerasTensor) and len(output.shape) == 4:
            names.append(layer.name)
    return names


def feature_and_output_model(model: keras.Model, layer_name: str | None) -> tuple[keras.Model, str]:
    """A model giving (the named layer's feature map, the model's output); default layer: the last spatial one."""
    names = spatial_layer_names(model)
    if not names:
        raise FgsslError(
            f"model {model.name!r} has no layer with a spatial [batch, height, width, channels] output for Grad-CAM"
        )
    layer_name = layer_name or names[-1]
    if layer_name not in names:
        raise FgsslError(
            f"--layer={layer_name!r} is not a spatial layer of {model.name!r}; valid names: {', '.join(names)}"
        )
    return keras.Model(model.inputs, [model.get_layer(layer_name).output, model.outputs[0]]), layer_name


def class_scores(outputs: tf.Tensor, classes) -> tf.Tensor:
    """outputs[i, classes[i]]: the logit Grad-CAM explains."""
    return tf.gather(outputs, tf.cast(classes, tf.int32), axis=1, batch_dims=1)


def embedding_scores(outputs: tf.Tensor) -> tf.Tensor:
    """For an encoder without classes: the squared norm of the embedding (where the features respond)."""
    return tf.reduce_sum(tf.square(tf.reshape(outputs, [tf.shape(outputs)[0], -1])), axis=1)


def grad_cam(
    model: keras.Model, images, target=None, layer_name: str | None = None, method: str = "gradcam"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Heat maps [B, H, W] in [0, 1] at the images' size, the predictions [B] (argmax of the
    output; -1 for target 'embedding') and the layer used. `images` are the model's float
    input. target: None explains the predicted class, an int (or one per image) that
    class, 'embedding' the squared norm of an encoder's embedding."""
    if method not in METHODS:
        raise FgsslError(f"unknown --method={method!r}; choose one of {', '.join(METHODS)}")
    explainer, layer_name = feature_and_output_model(model, layer_name)
    images = tf.convert_to_tensor(images, tf.float32)
    embedding = isinstance(target, str) and target == "embedding"
    with tf.GradientTape() as tape:
        features, outputs = explainer(images, training=False)
        predictions = tf.argmax(outputs, axis=1, output_type=tf.int32)
        if embedding:
            score = embedding_scores(outputs)
        elif target is None:
            score = class_scores(outputs, predictions)
        else:
            classes = np.broadcast_to(np.asarray(target, np.int32), [images.shape[0]])
            if classes.min() < 0 or classes.max() >= outputs.shape[-1]:
                raise FgsslError(f"--class={target} is out of range: the model has {outputs.shape[-1]} outputs")
            score = class_scores(outputs, classes)
    gradients = tape.gradient(score, features)
    if method == "gradcam":
        weights = tf.reduce_mean(gradients, axis=[1, 2])
    else:  # Grad-CAM++ with the exponential-score closed form
        g2, g3 = tf.square(gradients), tf.pow(gradients, 3)
        denominator = 2.0 * g2 + tf.reduce_sum(features, axis=[1, 2], keepdims=True) * g3
        alpha = tf.math.divide_no_nan(g2, denominator)
        weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2])
    cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", features, weights))
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
    cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
    return cam.numpy(), (np.full(images.shape[0], -1) if embedding else predictions.numpy()), layer_name


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 [H, 2W, 3]: the image beside the image under a jet-coloured heat map."""
    from matplotlib import colormaps

    base = np.asarray(image, np.float32)
    if base.dtype != np.uint8 and base.max() <= 1.0:
        base = base * 255.0
    colour = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1 - alpha) * base + alpha * colour
    return np.concatenate([base, blended], axis=1).round().clip(0, 255).astype(np.uint8)


def quadrant_mass(heatmap: np.ndarray) -> np.ndarray:
    """Share of the heat map's mass in each quadrant: [top-left, top-right, bottom-left, bottom-right]."""
    h, w = heatmap.shape[0] // 2, heatmap.shape[1] // 2
    parts = np.array([heatmap[:h, :w].sum(), heatmap[:h, w:].sum(), heatmap[h:, :w].sum(), heatmap[h:, w:].sum()])
    return parts / max(parts.sum(), 1e-12)
