"""Convolutions whose sums do not depend on the CPU model, its caches or the thread count.

The portable numerics mode (numerics.py) installs these as the CPU kernels of ATen's
`convolution` and `convolution_backward`, so every convolution of the process, in a model or
not, forward or backward, runs here. All three products are NNPACK forward convolutions:

- forward: y = conv(x, w);
- grad-input: conv(g, w flipped and transposed), the "full" correlation;
- grad-weight: conv(x as (C_in, N, H, W), g as (C_out, N, H', W')), i.e. the batch becomes
  the channels that are summed and the grad-output becomes the kernel.

NNPACK parallelises over tiles and output channels, never over a sum, so its bytes do not
depend on the thread count; its x86-64 kernels are one AVX2+FMA3 build on every CPU. The one
thing it takes from the CPU that changes a sum is its channel blocking: it sums the input
channels in blocks of L1-per-thread / (tuple bytes x (mr + nr)) channels and adds the blocks'
results, so a CPU with a smaller L1 splits a long sum elsewhere. We therefore never hand it
more than CHANNEL_CHUNK channels to sum, and add the chunks' results ourselves in a fixed order.

Where NNPACK lacks a feature, the product stays on NNPACK: a batch of 1 runs as a batch of 2
(NNPACK's batched kernel, so an image's output is the same in any batch), a stride as a
stride-1 convolution subsampled, a dilation as a kernel with zeros between its taps, groups
one group at a time, padding >= kernel as explicit zeros, and a kernel wider than NNPACK's
16 px (the grad-weight of a layer on more than 16 px) as the sum of its 16 px blocks.
Transposed convolutions and types other than float32 are refused with one line.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnistpipe.errors import PipelineError

# Channels NNPACK sums in one call. Its blocking keeps at least this many channels together
# when the L1 data cache gives each hardware thread >= 8 KiB (for its FFT kernels: 8 KiB / (64
# B x 4) = 32; Winograd: 36). Every x86-64 CPU with AVX2 has 32-48 KiB per core, shared by at
# most 2 threads (4 on the discontinued Xeon Phi): so the blocking never splits our chunk.
CHANNEL_CHUNK = 32
NNPACK_MAX_KERNEL = 16  # px: NNPACK's largest tile is 16x16


def _refuse(reason: str) -> PipelineError:
    return PipelineError(f"portable numerics cannot run this convolution: {reason}")


def _nnpack(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Stride-1 correlation of (N, C, H, W) x with (O, C, kh, kw) w, `pad` zeros on each side,
    as NNPACK calls on at most CHANNEL_CHUNK channels and 16x16 kernel blocks, summed in order."""
    if max(w.shape[-2:]) > NNPACK_MAX_KERNEL:
        return _kernel_blocks(F.pad(x, (pad,) * 4), w, bias)
    if pad >= min(w.shape[-2:]):  # NNPACK needs padding < kernel (pytorch issue 90142)
        x, pad = F.pad(x, (pad,) * 4), 0
    single = x.shape[0] == 1
    if single:  # batch 1 would take NNPACK's per-image inference kernels: other sums
        x = x.expand(2, *x.shape[1:])
    out = None
    for start in range(0, x.shape[1], CHANNEL_CHUNK):
        part = torch._nnpack_spatial_convolution(
            x[:, start : start + CHANNEL_CHUNK].contiguous(),
            w[:, start : start + CHANNEL_CHUNK].contiguous(),
            bias if start == 0 else None,
            [pad, pad],
            [1, 1],
        )
        out = part if out is None else out.add_(part)
    return out[:1] if single else out


def _kernel_blocks(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The unpadded correlation with a kernel wider than NNPACK's 16 px, as the sum of the
    correlations with its blocks (at most 16x16 each), each over the input rows and columns
    that block meets."""
    (kh, kw), (h, wd) = w.shape[-2:], x.shape[-2:]
    out_h, out_w = h - kh + 1, wd - kw + 1
    out = None
    for r0, r1 in _blocks(kh):
        for c0, c1 in _blocks(kw):
            part = _nnpack(
                x[:, :, r0 : r1 - 1 + out_h, c0 : c1 - 1 + out_w],
                w[:, :, r0:r1, c0:c1],
                bias if out is None else None,
                0,
            )
            out = part if out is None else out.add_(part)
    return out


def _blocks(size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most NNPACK_MAX_KERNEL that tile range(size) evenly."""
    count = -(-size // NNPACK_MAX_KERNEL)
    edges = [size * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def _check(x: torch.Tensor, w: torch.Tensor, transposed: bool) -> None:
    if transposed:
        raise _refuse("transposed convolutions have no portable kernel here")
    if x.dim() != 4:
        raise _refuse(f"only 2-D convolutions run portably, not {x.dim() - 2}-D")
    if x.dtype != torch.float32 or w.dtype != torch.float32:
        raise _refuse(f"only float32 runs portably, not {x.dtype}")
    if x.shape[0] == 0:
        raise _refuse("an empty batch")


def _square(values: Sequence[int], name: str) -> int:
    if len(set(values)) != 1:
        raise _refuse(f"{name} {list(values)} differs between height and width")
    return int(values[0])


def _dilated(w: torch.Tensor, dilation: int) -> torch.Tensor:
    """The kernel with dilation - 1 zeros between its taps."""
    if dilation == 1:
        return w
    o, c, kh, kw = w.shape
    spread = w.new_zeros(o, c, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    spread[:, :, ::dilation, ::dilation] = w
    return spread


def convolution(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """aten::convolution, portably."""
    _check(x, w, transposed)
    step, pad = _square(stride, "stride"), _square(padding, "padding")
    kernel = _dilated(w, _square(dilation, "dilation"))
    per_group = w.shape[0] // groups
    outs = [
        _nnpack(
            x[:, g * w.shape[1] : (g + 1) * w.shape[1]],
            kernel[g * per_group : (g + 1) * per_group],
            None if bias is None else bias[g * per_group : (g + 1) * per_group],
            pad,
        )
        for g in range(groups)
    ]
    out = outs[0] if groups == 1 else torch.cat(outs, 1)
    return out if step == 1 else out[:, :, ::step, ::step].contiguous()


def convolution_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """aten::convolution_backward, portably: (grad-input, grad-weight, grad-bias)."""
    _check(x, w, transposed)
    step, pad = _square(stride, "stride"), _square(padding, "padding")
    spacing = _square(dilation, "dilation")
    kernel = _dilated(w, spacing)
    k = kernel.shape[-1]
    full = (x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1)
    if step != 1:  # the stride-1 output's gradient: zeros where the stride skipped
        spread = grad.new_zeros(grad.shape[0], grad.shape[1], *full)
        spread[:, :, ::step, ::step] = grad
        grad = spread
    grad = grad.contiguous()
    per_in, per_out = w.shape[1], w.shape[0] // groups
    inputs, weights = [], []
    for g in range(groups):
        xg = x[:, g * per_in : (g + 1) * per_in]
        gg = grad[:, g * per_out : (g + 1) * per_out]
        if output_mask[0]:
            kg = kernel[g * per_out : (g + 1) * per_out]
            flipped = kg.flip(2, 3).transpose(0, 1)  # (C_in, O, k, k)
            inner = k - 1 - pad  # the full correlation, cropped back to the input's size
            grad_x = _nnpack(gg, flipped, None, max(inner, 0))
            if inner < 0:
                grad_x = grad_x[:, :, -inner : inner or None, -inner : inner or None]
            inputs.append(grad_x)
        if output_mask[1]:
            # (C_in, N, H, W) correlated with (O, N, H', W') gives (C_in, O, k, k)
            grad_w = _nnpack(xg.transpose(0, 1), gg.transpose(0, 1), None, pad)
            weights.append(grad_w.transpose(0, 1)[:, :, ::spacing, ::spacing])
    grad_input = (inputs[0] if groups == 1 else torch.cat(inputs, 1)) if inputs else None
    grad_weight = None
    if weights:
        grad_weight = (weights[0] if groups == 1 else torch.cat(weights, 0)).contiguous()
    grad_bias = grad.sum((0, 2, 3)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


def check_layers(model: nn.Module) -> None:
    """Refuse, naming the first one, a layer whose convolution has no portable kernel here:
    transposed convolutions and 1-D or 3-D ones (the kernels would refuse at run time too)."""
    for name, layer in model.named_modules():
        if isinstance(layer, nn.modules.conv._ConvNd) and type(layer) is not nn.Conv2d:
            raise PipelineError(
                f"portable numerics cannot run layer {name!r} ({type(layer).__name__}): only"
                " Conv2d has portable kernels here; train it with numerics fast"
            )


_library: torch.library.Library | None = None  # kept alive: dropping it removes the kernels


def install() -> None:
    """Make these the CPU kernels of aten::convolution and aten::convolution_backward for the
    rest of the process."""
    global _library
    if _library is not None:
        return
    if not torch._nnpack_available():  # also initializes NNPACK, which a direct call needs
        raise PipelineError(
            "portable numerics need NNPACK, which this CPU or torch build lacks (x86-64 with"
            " AVX2 and FMA3 is required): use numerics fast"
        )
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "overriding a previously registered kernel": we mean it
        warnings.simplefilter("ignore")
        library.impl("convolution", convolution, "CPU")
        library.impl("convolution_backward", convolution_backward, "CPU")
    _library = library
