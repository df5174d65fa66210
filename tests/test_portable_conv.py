"""The portable convolutions: the same function as PyTorch's own for every precondition that
NNPACK lacks, the same bytes for an image in any batch, and, once installed, no other
convolution kernel runs; what has no portable kernel is refused with one line."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistpipe.errors import PipelineError
from mnistpipe.modeling import portable_conv
from mnistpipe.modeling.models import CNN, CNNConfig
from tests.conftest import REPO


@pytest.fixture(autouse=True, scope="module")
def nnpack_initialized():
    """As install() does first: NNPACK's kernels, called directly here, need it initialized
    (otherwise a test passes only after another one ran a convolution through PyTorch)."""
    assert torch._nnpack_available()


# name: (batch, in, out, height, width, kernel, stride, padding, dilation, groups, bias)
CASES = {
    "the default CNN's first layer (grad-weight kernel 28 px > 16)": (
        (32, 1, 16, 28, 28, 3, 1, 1, 1, 1, False)
    ),
    "more channels than one chunk, 7 px": (16, 70, 64, 7, 7, 3, 1, 1, 1, 1, True),
    "batch of 1, odd sizes": (1, 3, 5, 9, 11, 3, 1, 1, 1, 1, True),
    "stride 2": (4, 3, 6, 13, 13, 3, 2, 1, 1, 1, True),
    "dilation 2": (4, 4, 6, 12, 12, 3, 1, 2, 2, 1, True),
    "groups 2": (4, 4, 6, 12, 12, 3, 1, 1, 1, 2, True),
    "padding >= kernel": (4, 3, 5, 10, 10, 3, 1, 3, 1, 1, False),
    "kernel 19 > 16": (3, 2, 3, 24, 24, 19, 1, 2, 1, 1, True),
    "no padding, 5x5 kernel": (3, 6, 8, 9, 9, 5, 1, 0, 1, 1, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_product_matches_pytorch_in_float64(case):
    n, cin, cout, h, w, k, stride, pad, dilation, groups, has_bias = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, w, generator=generator, dtype=torch.float64)
    weight = torch.randn(cout, cin // groups, k, k, generator=generator, dtype=torch.float64)
    bias = torch.randn(cout, generator=generator, dtype=torch.float64) if has_bias else None
    x.requires_grad_()
    weight.requires_grad_()
    y = F.conv2d(x, weight, bias, stride, pad, dilation, groups)
    grad = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    grad_x, grad_w = torch.autograd.grad(y, (x, weight), grad)

    def f32(t):
        return None if t is None else t.detach().float()

    settings = ([stride] * 2, [pad] * 2, [dilation] * 2, False, [0, 0], groups)
    got_y = portable_conv.convolution(f32(x), f32(weight), f32(bias), *settings)
    bias_sizes = [cout] if has_bias else None
    mask = [True, True, has_bias]
    got_x, got_w, got_b = portable_conv.convolution_backward(
        f32(grad), f32(x), f32(weight), bias_sizes, *settings, mask
    )
    pairs = [(got_y, y), (got_x, grad_x), (got_w, grad_w)]
    if has_bias:
        pairs.append((got_b, grad.sum((0, 2, 3))))
    for got, want in pairs:
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


def test_an_image_gives_the_same_bytes_in_any_batch():
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(5, 8, 14, 14, generator=generator)
    weight = torch.randn(16, 8, 3, 3, generator=generator)
    settings = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    whole = portable_conv.convolution(batch, weight, None, *settings)
    for index in range(5):
        alone = portable_conv.convolution(batch[index : index + 1], weight, None, *settings)
        assert torch.equal(alone[0], whole[index])
    pair = portable_conv.convolution(batch[1:3], weight, None, *settings)
    assert torch.equal(pair, whole[1:3])


def test_layers_without_a_portable_kernel_are_named():
    model = CNN(CNNConfig(channels=(4,), convs=(1,)))
    portable_conv.check_layers(model)  # Conv2d only: fine
    model.decoder = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(4, 1, 3))
    with pytest.raises(PipelineError, match=r"layer 'decoder.1' \(ConvTranspose2d\)"):
        portable_conv.check_layers(model)


# Run in a fresh process: installing the kernels is for the whole process, as in a stage.
INSTALLED = textwrap.dedent(
    """
    import json, sys
    import torch, torch.nn.functional as F
    from torch.profiler import profile
    from mnistpipe.modeling import portable_conv
    from tests.test_portable_conv import CASES
    portable_conv.install()
    ran, refusals = {}, {}
    for case, (n, cin, cout, h, w, k, s, p, d, g, b) in CASES.items():
        x = torch.randn(n, cin, h, w, requires_grad=True)
        weight = torch.randn(cout, cin // g, k, k, requires_grad=True)
        bias = torch.randn(cout, requires_grad=True) if b else None
        with profile() as prof:
            F.conv2d(x, weight, bias, s, p, d, g).square().sum().backward()
        ran[case] = sorted({e.name for e in prof.events() if e.name.startswith("aten::")
                            and ("conv" in e.name or "nnpack" in e.name)})
    image, weight = torch.ones(2, 3, 5, 5), torch.ones(4, 3, 3, 3)
    for name, call in {
        "transposed": lambda: F.conv_transpose2d(image, weight.transpose(0, 1)),
        "1-D": lambda: F.conv1d(image[..., 0], weight[..., 0]),
        "float64": lambda: F.conv2d(image.double(), weight.double()),
    }.items():
        try:
            call()
        except Exception as error:
            refusals[name] = [type(error).__name__, str(error)]
    print(json.dumps({"ran": ran, "refusals": refusals}))
    """
)


def test_installed_every_convolution_runs_on_nnpack_and_the_rest_is_refused():
    result = subprocess.run(
        [sys.executable, "-c", INSTALLED], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = [
        "aten::_nnpack_spatial_convolution",
        "aten::conv2d",
        "aten::convolution",
        "aten::convolution_backward",
    ]
    assert report["ran"] == {case: expected for case in CASES}
    assert report["refusals"] == {
        "transposed": [
            "PipelineError",
            "portable numerics cannot run this convolution: transposed convolutions have no"
            " portable kernel here",
        ],
        "1-D": [
            "PipelineError",
            "portable numerics cannot run this convolution: only 2-D convolutions run"
            " portably, not 1-D",
        ],
        "float64": [
            "PipelineError",
            "portable numerics cannot run this convolution: only float32 runs portably, not"
            " torch.float64",
        ],
    }
