"""Depthwise convolutions whose kernel is larger than their input, trained on the CPU: the weight gradient tap by
tap instead of through oneDNN.

    n = use_tap_gradients(model)   # in place: the eligible depthwise nn.Conv2d of `model` (a count)
    tap_candidates(model, size)    # how many of them meet a kernel wider than their input at `size` px
    depthwise_inputs(model, size)  # [(convolution, the shape of its input)] at `size` px

Why: torch's CPU convolutions (oneDNN, torch 2.14.1) compute the weight gradient of a depthwise convolution 40-120x
slower than its forward pass when the kernel is wider than the feature map it slides over, which is what the last
stages of an EfficientNet or MobileNet meet on small inputs (efficientnet_lite0 at 64 px: 5x5 kernels on 4x4 and
2x2 maps, 3x3 on 2x2). Measured on this 2-core CPU, batch 32, channels_last, ms for the weight gradient alone:

    channels, map, kernel, stride     oneDNN   taps    (its forward)
    1152, 2x2, 5x5, 1                  13.4    1.8     0.11
    1152, 2x2, 3x3, 1                   9.5    0.7     0.09
     672, 4x4, 5x5, 1                   9.4    2.4     0.22
     672, 4x4, 5x5, 2                  10.8    1.2     0.11
     480, 4x4, 5x5, 1                   6.8    1.8     0.18
     480, 4x4, 3x3, 1 (kernel fits)     0.13   0.62    0.13
     240, 8x8, 5x5, 1 (kernel fits)     1.7    2.5     0.38

so only convolutions whose kernel exceeds the map take the taps (checked on every call: the map size is the
input's), and only where a weight gradient is wanted, on the CPU. A training step of efficientnet_lite0 at 64 px
went from 142 to 208 images/s (benchmarks/bench_depthwise.py, which measures it). The forward pass and the input's
gradient stay oneDNN's; the weight gradient is the same sum in another order (float rounding apart: 2e-7 of its
largest value). Whether a model trains faster this way is timed once in the plan (kit.runtime.use_depthwise_taps).

A tap (i, j) of the kernel contributes sum over batch and output positions of x[.., o*s - p + i] * g[.., o], over
the output positions whose input row and column fall inside the map (taps that only ever meet padding are 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _overlap(tap: int, size_in: int, size_out: int, stride: int, pad: int) -> tuple[int, int, int]:
    """(first output position, how many, first input position) of the outputs that tap `tap` sees inside the
    input: o with 0 <= o * stride - pad + tap < size_in."""
    first = max(0, -(-(pad - tap) // stride))
    last = min(size_out - 1, (size_in - 1 + pad - tap) // stride)
    return first, last - first + 1, first * stride - pad + tap


def tap_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> torch.Tensor:
    """The weight gradient [C, 1, kh, kw] of a depthwise convolution of x [B, C, H, W] whose output's gradient is
    `grad` [B, C, Ho, Wo], one kernel tap at a time."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    (h, w), (ho, wo) = x.shape[-2:], grad.shape[-2:]
    out = x.new_zeros(x.shape[1], kh, kw)
    columns = [(j, *_overlap(j, w, wo, sw, pw)) for j in range(kw)]
    for i in range(kh):
        oy, ny, iy = _overlap(i, h, ho, sh, ph)
        if ny <= 0:
            continue
        for j, ox, nx, ix in columns:
            if nx <= 0:
                continue
            xs = x[:, :, iy:iy + (ny - 1) * sh + 1:sh, ix:ix + (nx - 1) * sw + 1:sw]
            out[:, i, j] = (xs * grad[:, :, oy:oy + ny, ox:ox + nx]).sum((0, 2, 3))
    return out.unsqueeze(1)


class _TapDepthwise(torch.autograd.Function):
    """F.conv2d(x, weight, bias, stride, padding, groups=C) whose weight gradient is tap_weight_grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # oneDNN's input gradient is as fast as its forward: kept
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = tap_weight_grad(x, grad, tuple(weight.shape[-2:]), ctx.stride, ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class TapDepthwiseConv2d(nn.Conv2d):
    """An nn.Conv2d (depthwise, zero padding, no dilation) that takes the taps for its weight gradient when its
    kernel is wider or taller than its input and the gradient is computed on the CPU; otherwise nn.Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled() and _too_wide(self, x.shape):
            return _TapDepthwise.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def _too_wide(conv: nn.Conv2d, shape: torch.Size) -> bool:
    """Whether conv's kernel is taller or wider than the map of this shape ([..., H, W]) it slides over."""
    return conv.kernel_size[0] > shape[-2] or conv.kernel_size[1] > shape[-1]


def _eligible(m: nn.Module) -> bool:
    # exactly nn.Conv2d: subclasses (timm's Conv2dSame pads in its own forward) keep their forward
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.dilation == (1, 1) and m.padding_mode == "zeros" and isinstance(m.padding, tuple))


def use_tap_gradients(model: nn.Module) -> int:
    """Make every eligible depthwise convolution of `model` a TapDepthwiseConv2d, in place (its class only:
    parameters, buffers, hooks and state_dict keys are the module's own). Returns how many."""
    n = 0
    for m in model.modules():
        if _eligible(m):
            m.__class__ = TapDepthwiseConv2d
            n += 1
    return n


def depthwise_inputs(model: nn.Module, input_size: int) -> list[tuple[nn.Conv2d, torch.Size]]:
    """(convolution, its input's shape) for each depthwise convolution of `model` that use_tap_gradients converts
    (or has converted), as one image of `input_size` px meets them: a forward pass in eval mode, without a gradient;
    every module's mode is put back as it was."""
    seen = []
    convs = [m for m in model.modules() if _eligible(m) or type(m) is TapDepthwiseConv2d]
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].shape))) for m in convs]
    if not hooks:
        return []
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        for m, training in modes:
            m.training = training
        for h in hooks:
            h.remove()
    return seen


def tap_candidates(model: nn.Module, input_size: int) -> int:
    """How many depthwise convolutions of `model` that use_tap_gradients converts meet a kernel wider than their
    input for an input of `input_size` px."""
    return sum(_too_wide(conv, shape) for conv, shape in depthwise_inputs(model, input_size))
