"""A PyTorch deconvnet with zfjax's weights, for side-by-side timings and checks.

Benchmarks only (torch is not a zfjax dependency; install ``torch==2.13.0``).
The layers come from the network description (any of zfnet, alexnet, vgg16), the
operations are PyTorch's own (conv2d, max_pool2d with indices, conv_transpose2d).
Unpooling scatter-adds to PyTorch's max-pool indices, the exact adjoint of max
selection, so its projections must match zfjax's to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zfjax.nets import network


class TorchDeconvnet:
    """The conv/pool part of a network in PyTorch (NCHW) with weights copied from zfjax params."""

    def __init__(self, params, config: network.Network):
        self.ops = network.spatial_ops(config)
        self.weights = {
            op.name: torch.from_numpy(np.asarray(params[op.name]["kernel"]).transpose(3, 2, 0, 1).copy())
            for op in self.ops if op.kind == "conv"
        }
        self.biases = {op.name: torch.from_numpy(np.asarray(params[op.name]["bias"]).copy())
                       for op in self.ops if op.kind == "conv"}

    def forward(self, images_nhwc: np.ndarray):
        """Returns ({layer: NCHW activation}, {pool: flat indices}, {op input sizes})."""
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        acts, indices, sizes = {}, {}, {}
        for op in self.ops:
            sizes[op.name] = x.shape[-1]
            if op.kind == "conv":
                x = F.conv2d(x, self.weights[op.name], self.biases[op.name], op.stride, op.padding)
            else:
                x, indices[op.name] = F.max_pool2d(x, op.kernel, op.stride, op.padding,
                                                   ceil_mode=op.stage.ceil, return_indices=True)
            if op.relu:
                x = F.relu(x)
            acts[op.name] = x
            if op.norm is not None:
                x = F.local_response_norm(x, op.norm.size, op.norm.alpha, op.norm.beta, op.norm.k)
        return acts, indices, sizes

    def project(self, layer: str, signal: torch.Tensor, indices, sizes) -> torch.Tensor:
        """Project an NCHW signal on ``layer`` down to pixels: (N, 3, H, W)."""
        names = [op.name for op in self.ops]
        x = signal
        for op in reversed(self.ops[: names.index(layer) + 1]):
            size = sizes[op.name]
            if op.kind == "pool":
                n, c, h, w = x.shape
                idx = indices[op.name].expand(n, -1, -1, -1).reshape(n, c, -1)
                out = torch.zeros(n, c, size * size, dtype=x.dtype)
                x = out.scatter_add_(2, idx, x.reshape(n, c, -1)).reshape(n, c, size, size)
                continue
            extra = size - ((x.shape[-1] - 1) * op.stride - 2 * op.padding + op.kernel)
            x = F.conv_transpose2d(F.relu(x) if op.relu else x, self.weights[op.name], None,
                                   op.stride, op.padding, output_padding=extra)
        return x


class _NormPassThrough(torch.autograd.Function):
    """Local response norm forward, identity backward: the deconvnet does not invert it."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


class _Norm(torch.nn.Module):
    def __init__(self, lrn):
        super().__init__()
        self.lrn = lrn

    def forward(self, x):
        n = self.lrn
        return _NormPassThrough.apply(x, n.size, n.alpha, n.beta, n.k)


def torch_sequential(params, config: network.Network):
    """The conv/pool part as a torch.nn.Sequential (for Captum), and layer -> the module
    whose output is that layer's recorded map (a conv's ReLU, a pool)."""
    layers, modules = [], {}
    for op in network.spatial_ops(config):
        if op.kind == "conv":
            conv = torch.nn.Conv2d(params[op.name]["kernel"].shape[2], op.channels, op.kernel,
                                   op.stride, op.padding)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(
                    np.asarray(params[op.name]["kernel"]).transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(np.asarray(params[op.name]["bias"]).copy()))
            layers.append(conv)
        else:
            layers.append(torch.nn.MaxPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.stage.ceil))
        if op.relu:
            layers.append(torch.nn.ReLU())
        modules[op.name] = layers[-1]
        if op.norm is not None:
            layers.append(_Norm(op.norm))
    return torch.nn.Sequential(*layers).eval(), modules


class _FlattenNHWC(torch.nn.Module):
    """Flatten in zfjax's NHWC order, so the dense weights apply unchanged."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def torch_network(params, config: network.Network):
    """The whole network at inference (true contrast normalisation, no dropout) as
    torch.nn.Sequential with zfjax's weights, for Captum's gradient methods (the same
    construction as tests/test_attribution.py's), and layer -> the module whose
    output is that layer's recorded map (a conv's ReLU, a pool). Input NCHW;
    output the logits (N, classes)."""
    from torch import nn

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a, np.float32))

    layers, modules = [], {}
    for stage in network.stages(config):
        if isinstance(stage, network.Conv):
            kernel = np.asarray(params[stage.name]["kernel"])
            layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], stage.kernel, stage.stride,
                              stage.padding)
            layer.weight.data = tensor(kernel.transpose(3, 2, 0, 1))
            layer.bias.data = tensor(params[stage.name]["bias"])
        elif isinstance(stage, network.Dense):
            kernel = np.asarray(params[stage.name]["kernel"])
            layer = nn.Linear(*kernel.shape)
            layer.weight.data = tensor(kernel.T)
            layer.bias.data = tensor(params[stage.name]["bias"])
        elif isinstance(stage, network.MaxPool):
            layer = nn.MaxPool2d(stage.window, stage.stride, stage.padding, ceil_mode=stage.ceil)
        elif isinstance(stage, network.ReLU):
            layer = nn.ReLU()
        elif isinstance(stage, network.LRN):
            layer = nn.LocalResponseNorm(stage.size, stage.alpha, stage.beta, stage.k)
        elif isinstance(stage, network.Flatten):
            layer = _FlattenNHWC()
        else:  # dropout: inference
            continue
        if isinstance(stage, (network.Conv, network.MaxPool)) or (
                isinstance(stage, network.ReLU) and isinstance(layers[-1], nn.Conv2d)):
            modules[getattr(stage, "name", None) or list(modules)[-1]] = layer
        layers.append(layer)
    sequential = nn.Sequential(*layers).eval()
    for p in sequential.parameters():
        p.requires_grad_(False)  # gradients to the input only
    return sequential, modules
