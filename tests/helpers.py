"""Shared test helpers."""

import jax
import numpy as np

from zfjax import model


def random_params(config, seed=0, bias_std=0.0):
    """He-normal weights and N(0, bias_std) biases, drawn with numpy.

    Much faster in tests than model.init_params, whose first call compiles the network.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))

    def draw(path, leaf):
        if path[-1].key == "bias":
            if not bias_std:
                return np.zeros(leaf.shape, np.float32)
            return rng.normal(0, bias_std, leaf.shape).astype(np.float32)
        return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def write_image_folder(root, classes, per_class, *, splits=("train", "val"), shape=(80, 96),
                       seed=0, ext="png"):
    """Writes random images laid out root/<split>/<class>/<i>.<ext>; returns root.

    classes: class names, or {split: class names} to give the splits different classes.
    Channel (c % 3) of class c's images is 25 * c, so the classes can be learnt.
    """
    from pathlib import Path

    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    for split in splits:
        names = classes[split] if isinstance(classes, dict) else classes
        for name in names:
            c = sorted(set(names) | set(classes.get("train", ()) if isinstance(classes, dict)
                                          else names)).index(name)
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*shape, 3), np.uint8)
                pixels[:, :, c % 3] = 25 * c
                Image.fromarray(pixels).save(root / split / name / f"{i}.{ext}")
    return root
