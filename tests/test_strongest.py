"""The one strongest-activation search: per image, one image's strongest map, top-k merge."""

import numpy as np

from zfjax.nets import strongest


def test_per_image_and_strongest_map_equal_argmax_with_ties_first():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, (3, 5, 6, 7)).astype(np.float32)  # many ties
    value, y, x = (np.asarray(a) for a in strongest.per_image(acts))
    flat = acts.reshape(3, 30, 7)
    first = flat.argmax(axis=1)  # numpy: the first maximum in row-major (y, x) order
    np.testing.assert_array_equal(value, flat.max(axis=1))
    np.testing.assert_array_equal(y * 6 + x, first)
    v, c, yy, xx = (int(a) for a in strongest.strongest_map(acts[1]))
    assert v == acts[1].max() and c == int(acts[1].max(axis=(0, 1)).argmax())
    assert yy * 6 + xx == int(acts[1, ..., c].reshape(-1).argmax())


def test_merge_over_batches_equals_a_sort_of_all_images():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(10, 4, 4, 3)).astype(np.float32)
    best = strongest.empty_top(3, 4)
    for start in (0, 4, 8):  # batches of 4, the last padded with 2 fake images
        batch = np.zeros((4, 4, 4, 3), np.float32) + 100  # padding would win if counted
        real = acts[start:start + 4]
        batch[:len(real)] = real
        best = strongest.merge(best, batch, start, len(real))
    per_image = acts.reshape(10, 16, 3).max(axis=1)
    for c in range(3):
        order = np.argsort(-per_image[:, c], kind="stable")[:4]
        np.testing.assert_array_equal(np.asarray(best.image[c]), order)
        np.testing.assert_array_equal(np.asarray(best.value[c]), per_image[order, c])
