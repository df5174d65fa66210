"""Hashes of the portable convolution products on fixed inputs (numpy's PCG64, so the same
inputs under any torch version), per thread count: python -m benchmarks.conv_hashes THREADS."""

import hashlib
import json
import sys

import numpy as np
import torch

from mnistpipe.modeling import portable_conv

torch.set_num_threads(int(sys.argv[1]))
portable_conv.install()
rng = np.random.default_rng(7)
out = {}
for cin, cout, side in [(1, 16, 28), (16, 32, 14), (32, 32, 14), (32, 64, 7), (64, 64, 7)]:
    x = torch.from_numpy(rng.standard_normal((128, cin, side, side), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((cout, cin, 3, 3), dtype=np.float32))
    g = torch.from_numpy(rng.standard_normal((128, cout, side, side), dtype=np.float32))
    settings = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    y = portable_conv.convolution(x, w, None, *settings)
    gx, gw, _ = portable_conv.convolution_backward(g, x, w, None, *settings, [True, True, False])
    digest = hashlib.sha256()
    for t in (y, gx, gw):
        digest.update(t.contiguous().numpy().tobytes())
    out[f"{cin}->{cout}@{side}"] = digest.hexdigest()[:16]
print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "hashes": out}))
