"""Backbones: `build_resnet(BackboneConfig, image_size)`."""

from fgssl_tf.models.resnet import BACKBONES, build_resnet

__all__ = ["BACKBONES", "build_resnet"]
