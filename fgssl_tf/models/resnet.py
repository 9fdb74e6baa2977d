"""ResNet-10, ResNet-18 and ResNet-50 encoders (torchvision layout), as Keras functional models.

Written here rather than taken from `keras.applications` because the paper's
encoders need what that module lacks: ResNet-18, a small-image stem (3x3 conv,
no max-pool) and synchronized batch normalisation across replicas. Strided
convolutions pad explicitly so shapes match PyTorch (`'same'` pads asymmetrically).
Layers are named `stem_*` and `block{1..4}_*`, so tools can pick stages by name.
"""

from __future__ import annotations

import keras
from keras import layers

from fgssl_tf.config import BACKBONES, BackboneConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.models.layers import Conv2D, GridAveragePooling, batch_norm

# ResNet-10 is ResNet-18 with one basic block per stage: half the depth, for phones and quick runs.
STAGES = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def stage_output_names(name: str) -> tuple[str, ...]:
    """The layer that ends each stage of backbone `name` (`block{stage}_unit{last}_out`)."""
    _, repeats = STAGES[name]
    return tuple(f"block{stage + 1}_unit{count}_out" for stage, count in enumerate(repeats))


def _conv_init() -> keras.initializers.Initializer:
    """He-normal over fan-out, as torchvision. A new one per layer: an initializer draws
    its seed when it is made, so a module-level one would be seeded at import time,
    before `keras.utils.set_random_seed`, and differ from one process to the next."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _bn(config: BackboneConfig, name: str) -> layers.Layer:
    # PyTorch BN: momentum 0.1 (Keras 0.9), eps 1e-5.
    return batch_norm(name, synchronized=config.synchronized_bn)


def _conv(x, filters, kernel, stride, name):
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return Conv2D(filters, kernel, stride, padding=padding, use_bias=False, kernel_initializer=_conv_init(), name=name)(
        x
    )


def _basic_block(x, filters, stride, config, name):
    shortcut = x
    y = _conv(x, filters, 3, stride, f"{name}_conv1")
    y = layers.ReLU(name=f"{name}_relu1")(_bn(config, f"{name}_bn1")(y))
    y = _bn(config, f"{name}_bn2")(_conv(y, filters, 3, 1, f"{name}_conv2"))
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn(config, f"{name}_down_bn")(_conv(x, filters, 1, stride, f"{name}_down_conv"))
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def _bottleneck_block(x, filters, stride, config, name):
    shortcut = x
    y = layers.ReLU(name=f"{name}_relu1")(_bn(config, f"{name}_bn1")(_conv(x, filters, 1, 1, f"{name}_conv1")))
    y = layers.ReLU(name=f"{name}_relu2")(_bn(config, f"{name}_bn2")(_conv(y, filters, 3, stride, f"{name}_conv2")))
    y = _bn(config, f"{name}_bn3")(_conv(y, filters * 4, 1, 1, f"{name}_conv3"))
    if stride != 1 or x.shape[-1] != filters * 4:
        shortcut = _bn(config, f"{name}_down_bn")(_conv(x, filters * 4, 1, stride, f"{name}_down_conv"))
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnet(config: BackboneConfig, image_size: int, pool_grid: int = 1) -> keras.Model:
    """float32 images in [0, 1], [B, H, W, 3] -> pooled features [B, pool_grid**2 * (512 or 2048)].

    pool_grid=1 is global average pooling; 2 is the paper's Jigsaw `AdaptiveAvgPool2d((2, 2))`.
    """
    if config.name not in STAGES:
        raise FgsslError(f"unknown backbone {config.name!r}; choose one of {', '.join(BACKBONES)}")
    block_type, repeats = STAGES[config.name]
    block = _basic_block if block_type == "basic" else _bottleneck_block
    inputs = keras.Input(shape=(None, None, 3), name="images")
    if config.resolved_small_stem(image_size):
        x = _conv(inputs, config.width, 3, 1, "stem_conv")
        x = layers.ReLU(name="stem_relu")(_bn(config, "stem_bn")(x))
    else:
        x = _conv(inputs, config.width, 7, 2, "stem_conv")
        x = layers.ReLU(name="stem_relu")(_bn(config, "stem_bn")(x))
        x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = layers.MaxPooling2D(3, 2, name="stem_pool")(x)
    for stage, count in enumerate(repeats):
        filters = config.width * 2**stage
        for unit in range(count):
            stride = 2 if stage > 0 and unit == 0 else 1
            x = block(x, filters, stride, config, f"block{stage + 1}_unit{unit + 1}")
    if pool_grid == 1:
        features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    else:
        features = GridAveragePooling(pool_grid, name=f"grid_pool_{pool_grid}x{pool_grid}")(x)
    return keras.Model(inputs, features, name=f"{config.name}_encoder")
