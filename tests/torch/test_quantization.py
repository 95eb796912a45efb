"""The torch twin's quantized layer under torch.compile (fullgraph: a graph break fails)."""

from __future__ import annotations

import numpy as np
import torch

from llama_shared import quantization as q
from llama_torch import quantization as torch_quant
from tests.cases import QUANTIZATION_SETTINGS as SETTINGS


def test_quantized_linear_runs_under_torch_compile():
    """Compiled, a quantized layer takes the portable product (inductor fuses its dequantization)."""
    settings = q.with_kernel(SETTINGS["int4-g32"], "portable")
    layer = torch_quant.QuantizedLinear(64, 64, True, settings)
    for leaf, array in q.quantize(np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32),
                                  settings).items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    x = torch.randn(3, 64)
    with torch.no_grad():
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), layer(x), atol=1e-6, rtol=0)
