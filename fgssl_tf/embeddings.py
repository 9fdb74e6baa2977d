"""Looking at an embedding: a 2-D map (t-SNE, UMAP or PCA) and TensorBoard's projector."""

from __future__ import annotations

import math
import os

import numpy as np

from fgssl_tf.errors import FgsslError

METHODS = ("tsne", "umap", "pca")
PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
SPRITE_MAX_SIDE = 8192  # TensorBoard's limit for a sprite image


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2]. UMAP needs `pip install umap-learn`; t-SNE and PCA come with scikit-learn."""
    features = np.asarray(features, np.float32).reshape(len(features), -1)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(features)
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise FgsslError(
                "--method=umap needs the umap-learn package (pip install umap-learn); or use --method=tsne"
            ) from err
        return umap.UMAP(random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    raise FgsslError(f"unknown --method={method!r}; choose one of {', '.join(METHODS)}")


def sprite(images: np.ndarray, thumbnail: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one square grid of thumbnails, row-major (TensorBoard's sprite layout)."""
    import tensorflow as tf

    side = math.ceil(math.sqrt(len(images)))
    if side * thumbnail > SPRITE_MAX_SIDE:
        raise FgsslError(
            f"{len(images)} thumbnails of {thumbnail} px exceed TensorBoard's {SPRITE_MAX_SIDE} px sprite; "
            "use fewer images or smaller thumbnails"
        )
    small = tf.image.resize(tf.convert_to_tensor(images), [thumbnail, thumbnail], antialias=True)
    small = tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8).numpy()
    grid = np.full([side * thumbnail, side * thumbnail, 3], 255, np.uint8)
    for i, thumb in enumerate(small):
        row, col = divmod(i, side)
        grid[row * thumbnail : (row + 1) * thumbnail, col * thumbnail : (col + 1) * thumbnail] = thumb
    return grid


def write_projector(
    log_dir: str, embeddings: np.ndarray, labels, class_names, images: np.ndarray | None = None, thumbnail: int = 32
) -> str:
    """TensorBoard projector files in `log_dir`: the embeddings (a checkpoint), metadata.tsv
    (index, class) and, with images, a sprite of thumbnails. `tensorboard --logdir log_dir`."""
    import tensorflow as tf
    from PIL import Image
    from tensorboard.plugins import projector

    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "metadata.tsv"), "w") as f:
        f.write("index\tclass\n")
        for i, label in enumerate(labels):
            f.write(f"{i}\t{class_names[label]}\n")
    tf.train.Checkpoint(embedding=tf.Variable(np.asarray(embeddings, np.float32))).save(
        os.path.join(log_dir, "embedding.ckpt")
    )
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = PROJECTOR_TENSOR
    entry.metadata_path = "metadata.tsv"
    if images is not None:
        Image.fromarray(sprite(images, thumbnail)).save(os.path.join(log_dir, "sprite.png"))
        entry.sprite.image_path = "sprite.png"
        entry.sprite.single_image_dim.extend([thumbnail, thumbnail])
    projector.visualize_embeddings(log_dir, config)
    return log_dir
