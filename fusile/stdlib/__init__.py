"""fusile's standard library: fused ops written in the DSL, usable from PyTorch (forward and
backward, torch.compile and CUDA graphs). Signatures follow torch.nn.functional."""

from fusile.stdlib.activations import geglu, gelu, silu, swiglu
from fusile.stdlib.attention import attention
from fusile.stdlib.cross_entropy import cross_entropy
from fusile.stdlib.linear_cross_entropy import linear_cross_entropy
from fusile.stdlib.ops import (
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    log_softmax,
    rms_norm,
    softmax,
)
from fusile.stdlib.rope import apply_rotary_pos_emb, rope

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "apply_rotary_pos_emb",
    "attention",
    "cross_entropy",
    "geglu",
    "gelu",
    "layer_norm",
    "linear_cross_entropy",
    "log_softmax",
    "rms_norm",
    "rope",
    "silu",
    "softmax",
    "swiglu",
]
