"""How pixels become network inputs, for each source of weights.

network input = ((pixels in channel order) / scale - mean) / std

* a zfjax run: the run's training mean image, ``(pixel - mean image) / 255``
  (``data.preprocess``);
* torchvision weights: RGB in [0, 1], ImageNet mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225);
* Keras VGG16 weights ("caffe" mode): BGR, the ImageNet mean pixel
  (103.939, 116.779, 123.68) subtracted, no scaling.

Images come in as uint8 RGB at the stored size (``data.stored_size``) and are
centre-cropped to the network's input size, as for a trained run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zfjax.inputs import data


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays inside
class Preprocessing:
    """name; mean float32 (3,) per channel or (S, S, 3) image, in channel order and
    scaled units; std (3,); scale: pixels are divided by it first; bgr: channel order."""

    name: str
    mean: np.ndarray
    std: np.ndarray
    scale: float = 1.0
    bgr: bool = False

    def _mean_crop(self, size: int) -> np.ndarray:
        mean = np.asarray(self.mean, np.float32)
        return data.centre_crop(mean, size) if mean.ndim == 3 else mean

    def __call__(self, images_uint8: np.ndarray, input_size: int) -> np.ndarray:
        """uint8 RGB (N, S, S, 3) -> float32 network inputs (N, input_size, input_size, 3)."""
        x = data.centre_crop(np.asarray(images_uint8), input_size).astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x / np.float32(self.scale) - self._mean_crop(input_size)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x, np.float32)

    def batches(self, stored: np.ndarray, input_size: int, batch_size: int):
        """Network inputs of uint8 stored-size images (N, S, S, 3), preprocessed batch by
        batch (low memory): yields float32 (B, input_size, input_size, 3), B <= batch_size."""
        for start in range(0, len(stored), batch_size):
            yield self(stored[start:start + batch_size], input_size)

    def to_pixels(self, inputs: np.ndarray) -> np.ndarray:
        """Inverse: network inputs (..., H, W, 3) -> uint8 RGB, clipped to 0..255."""
        x = np.asarray(inputs, np.float32)
        x = (x * np.asarray(self.std, np.float32) + self._mean_crop(x.shape[-2])) * self.scale
        if self.bgr:
            x = x[..., ::-1]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def rgb(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        """Arrays in the network's channel order along ``axis`` (projections (..., 3),
        conv1 kernels HWIO with axis=2) as RGB, for showing."""
        return np.flip(x, axis) if self.bgr else np.asarray(x)

    def pixel_bounds(self, input_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) float32 broadcastable to (H, W, 3): the inputs of pixels 0 and 255."""
        mean, std = self._mean_crop(input_size), np.asarray(self.std, np.float32)
        lower, upper = (0 - mean) / std, (255 / self.scale - mean) / std
        return np.minimum(lower, upper).astype(np.float32), np.maximum(lower, upper).astype(np.float32)


def run_mean(mean_image: np.ndarray) -> Preprocessing:
    """A zfjax run: (pixel - training mean image) / 255, RGB (``data.preprocess``)."""
    return Preprocessing("run mean image", np.asarray(mean_image, np.float32),
                         np.full(3, data.PIXEL_SCALE, np.float32))


TORCHVISION = Preprocessing("torchvision (RGB [0,1], ImageNet mean/std)",
                            np.array([0.485, 0.456, 0.406], np.float32),
                            np.array([0.229, 0.224, 0.225], np.float32), scale=255.0)
CAFFE = Preprocessing("caffe (BGR, ImageNet mean pixel subtracted)",
                      np.array([103.939, 116.779, 123.68], np.float32),
                      np.ones(3, np.float32), bgr=True)
