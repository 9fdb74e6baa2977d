"""ResNet backbones: torchvision's parameter counts, stems, names, config."""

import numpy as np
import pytest

from fgssl_tf.config import BackboneConfig
from fgssl_tf.errors import FgsslError
from fgssl_tf.models import build_resnet


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# ResNet-10 (no torchvision model): ResNet-18 less the second basic block of each stage, two 3x3 convolutions
# of c channels and two batch norms each: 11,176,512 - sum over c in 64..512 of (18 c^2 + 4 c) = 4,905,792.
@pytest.mark.parametrize(
    "name,params,features",
    [("resnet10", 4_905_792, 512), ("resnet18", 11_176_512, 512), ("resnet50", 23_508_032, 2048)],
)
def test_parameter_counts_match_torchvision_without_fc(name, params, features):
    model = build_resnet(BackboneConfig(name=name), 224)
    assert trainable_count(model) == params  # torchvision resnet minus its fc layer
    assert model.output_shape == (None, features)


def test_stems_and_spatial_sizes():
    standard = build_resnet(BackboneConfig(), 64)
    small = build_resnet(BackboneConfig(), 32)  # auto: small stem at 32 px
    assert standard.get_layer("stem_conv").kernel_size == (7, 7)
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert "stem_pool" not in [layer.name for layer in small.layers]
    x = np.zeros((2, 32, 32, 3), np.float32)
    # 32 px: the small stem keeps 4x4 at block4, the standard stem would reach 1x1.
    assert small.get_layer("block4_unit2_out").output.shape[1] is None  # any input size
    from keras import Model

    block4 = Model(small.input, small.get_layer("block4_unit2_out").output)
    assert block4(x).shape[1:3] == (4, 4)
    assert small(x).shape == (2, 512)


def test_synchronized_bn_and_width_options():
    model = build_resnet(BackboneConfig(width=16, synchronized_bn=True), 32)
    bn = model.get_layer("stem_bn")
    assert bn.synchronized and bn.epsilon == 1e-5 and bn.momentum == 0.9
    assert model.output_shape == (None, 128)
    assert {f"block{i}_unit1_conv1" for i in range(1, 5)} <= {layer.name for layer in model.layers}


def test_batch_norm_synchronizes_by_default_only_with_several_replicas():
    from fgssl_tf.distribute import make_strategy

    for strategy, expected in ((make_strategy("one_device"), False), (make_strategy("mirrored"), True)):
        with strategy.scope():
            assert build_resnet(BackboneConfig(width=4), 32).get_layer("stem_bn").synchronized is expected
            assert (
                build_resnet(BackboneConfig(width=4, synchronized_bn=False), 32).get_layer("stem_bn").synchronized
                is False
            )


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(FgsslError, match="resnet18"):
        build_resnet(BackboneConfig(name="vgg"), 32)


def test_the_same_seed_builds_the_same_weights():
    """Every initializer is made after `set_random_seed`, so a seed fixes the weights
    (a shared module-level initializer made them differ per build and per process)."""
    import keras

    config = BackboneConfig(width=8)

    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [w.numpy() for w in build_resnet(config, 32).weights]

    first, again, other = weights(3), weights(3), weights(4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_fast_conv_gradients_equal_tensorflows(stride, padding):
    """The rewritten input gradient (flipped-kernel convolution, col2im on small strided maps,
    the stock kernel on larger ones) and the filter gradient equal TensorFlow's own, for odd
    and even kernels, non-square maps and sizes a stride does not divide."""
    import tensorflow as tf

    from fgssl_tf.models.layers import COL2IM_MAX_OUTPUT_POSITIONS, conv2d_fast_input_gradient

    rng = np.random.default_rng(stride)
    paths = set()
    for size in (1, 2, 5, 8, 13):
        for kernel_size in (1, 2, 3, 7):
            if padding == "VALID" and size < kernel_size:
                continue
            x = tf.constant(rng.normal(size=(2, size, size + 1, 3)), tf.float32)
            kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, 3, 4)), tf.float32)

            @tf.function  # as in training: static shapes pick the path
            def gradients(x, kernel):
                with tf.GradientTape(persistent=True) as tape:
                    tape.watch([x, kernel])
                    stock = tf.nn.conv2d(x, kernel, stride, padding)
                    ours = conv2d_fast_input_gradient(x, kernel, (stride, stride), padding)
                    weights = tf.random.stateless_normal(tf.shape(stock), [0, 1])
                    losses = tf.reduce_sum(stock * weights), tf.reduce_sum(ours * weights)
                return stock, ours, tape.gradient(losses[0], [x, kernel]), tape.gradient(losses[1], [x, kernel])

            stock, ours, expected, got = gradients(x, kernel)
            np.testing.assert_array_equal(ours.numpy(), stock.numpy())
            for want, have in zip(expected, got):
                np.testing.assert_allclose(have.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
            positions = stock.shape[1] * stock.shape[2]
            paths.add(
                "flipped"
                if stride == 1 and padding == "SAME" and kernel_size % 2
                else "col2im"
                if positions <= COL2IM_MAX_OUTPUT_POSITIONS
                else "stock"
            )
    assert paths >= ({"flipped", "col2im"} if stride == 1 and padding == "SAME" else {"col2im", "stock"})


def test_resnet_convolutions_use_the_fast_gradient_and_save_as_such(tmp_path):
    import keras

    from fgssl_tf.models.layers import Conv2D

    model = build_resnet(BackboneConfig(name="resnet18", width=8), image_size=32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(isinstance(layer, Conv2D) for layer in convs)
    path = tmp_path / "encoder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert all(isinstance(layer, Conv2D) for layer in loaded.layers if isinstance(layer, keras.layers.Conv2D))
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False), rtol=1e-5, atol=1e-6)


def _gradient_op_types(layer, x):
    import tensorflow as tf

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, x)

    return {op.type for op in gradient.get_concrete_function(x).graph.get_operations()}


def test_conv_layer_skips_the_slow_cpu_kernel_and_keeps_it_where_a_gpu_is_visible(monkeypatch):
    import tensorflow as tf

    from fgssl_tf.models import layers

    x = tf.zeros([2, 8, 8, 4])
    assert "Conv2DBackpropInput" not in _gradient_op_types(layers.Conv2D(4, 3, padding="same"), x)
    assert "Conv2DBackpropInput" not in _gradient_op_types(
        layers.Conv2D(4, 3, 2, padding="valid"), x
    )  # 3x3 output: col2im
    monkeypatch.setattr(layers.tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    assert "Conv2DBackpropInput" in _gradient_op_types(layers.Conv2D(4, 3, padding="same"), x)


def test_the_backbones_the_flags_offer_are_the_ones_built():
    """fgssl_tf/config.py names them without TensorFlow (for fast flag errors); resnet.py builds them."""
    from fgssl_tf.config import BACKBONES
    from fgssl_tf.models import resnet

    assert tuple(resnet.STAGES) == BACKBONES


@pytest.mark.parametrize("name", ["resnet10", "resnet18"])
def test_stage_outputs_are_named_where_each_stage_ends(name):
    """PMG reads stages 2-4 by these names: each must exist and halve the map of the stage before."""
    import keras

    from fgssl_tf.models import resnet

    model = build_resnet(BackboneConfig(name=name, width=4, small_stem=True), 32)
    names = resnet.stage_output_names(name)
    stages = keras.Model(model.input, [model.get_layer(n).output for n in names])
    shapes = [tuple(x.shape) for x in stages(np.zeros((1, 32, 32, 3), np.float32))]
    assert shapes == [(1, 32, 32, 4), (1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32)]
    assert model.layers[-2].name == names[-1]  # the last stage's named end feeds the pooling: no unit after it
