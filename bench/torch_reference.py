"""A hand-written PyTorch deconvnet with zfjax's weights, for side-by-side timings.

Benchmarks only (torch is not a zfjax dependency; install ``torch==2.13.0``).
Unpooling scatter-adds to PyTorch's max-pool indices, the exact adjoint of max
selection, so its projections must match zfjax's to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zfjax import model


class TorchDeconvnet:
    """ZFNet conv layers in PyTorch (NCHW) with weights copied from zfjax params."""

    def __init__(self, params, config: model.ZFNetConfig):
        self.specs = model.conv_specs(config)
        self.config = config
        self.weights = {
            s.name: torch.from_numpy(np.asarray(params[s.name]["kernel"]).transpose(3, 2, 0, 1).copy())
            for s in self.specs
        }
        self.biases = {s.name: torch.from_numpy(np.asarray(params[s.name]["bias"]).copy())
                       for s in self.specs}

    def forward(self, images_nhwc: np.ndarray):
        """Returns ({layer: NCHW activation}, {pool: flat indices}, {conv input sizes})."""
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        acts, indices, sizes = {}, {}, {}
        for s in self.specs:
            sizes[s.name] = x.shape[-1]
            x = F.relu(F.conv2d(x, self.weights[s.name], self.biases[s.name], s.stride, s.padding))
            acts[s.name] = x
            if s.pool:
                sizes[s.pool] = x.shape[-1]
                x, indices[s.pool] = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
                acts[s.pool] = x
            if s.norm and self.config.contrast_norm:
                x = F.local_response_norm(x, model.NORM_SIZE, model.NORM_ALPHA, model.NORM_BETA,
                                          model.NORM_K)
        return acts, indices, sizes

    def project(self, layer: str, signal: torch.Tensor, indices, sizes) -> torch.Tensor:
        """Project an NCHW signal on ``layer`` down to pixels: (N, 3, H, W)."""
        order = [n for s in self.specs for n in (s.name, s.pool) if n]
        x = signal
        for name in reversed(order[: order.index(layer) + 1]):
            if name.startswith("pool"):
                n, c, h, w = x.shape
                size = sizes[name]
                idx = indices[name].expand(n, -1, -1, -1).reshape(n, c, -1)
                out = torch.zeros(n, c, size * size, dtype=x.dtype)
                x = out.scatter_add_(2, idx, x.reshape(n, c, -1)).reshape(n, c, size, size)
                continue
            spec = next(s for s in self.specs if s.name == name)
            size = sizes[name]
            extra = size - ((x.shape[-1] - 1) * spec.stride - 2 * spec.padding + spec.kernel)
            x = F.conv_transpose2d(F.relu(x), self.weights[name], None, spec.stride,
                                   spec.padding, output_padding=extra)
        return x
