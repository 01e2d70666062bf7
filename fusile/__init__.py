"""fusile: a portable kernel DSL for deep learning.

Write tensor math in an ordinary Python function, mark it @fused, call it on torch tensors.
"""

from fusile.dsl.errors import FusileError
from fusile.dsl.fused import FusedFunction, from_source, fused
from fusile.dsl.stubs import STUBS
from fusile.dsl.types import Tensor, bf16, bool_, f16, f32, f64, i32, i64

abs = STUBS["abs"]
arange = STUBS["arange"]
astype = STUBS["astype"]
ceil = STUBS["ceil"]
concat = STUBS["concat"]
cos = STUBS["cos"]
erf = STUBS["erf"]
exp = STUBS["exp"]
exp2 = STUBS["exp2"]
expand_as = STUBS["expand_as"]
floor = STUBS["floor"]
index = STUBS["index"]
log = STUBS["log"]
log1p = STUBS["log1p"]
expm1 = STUBS["expm1"]
log2 = STUBS["log2"]
log_softmax = STUBS["log_softmax"]
logsumexp = STUBS["logsumexp"]
matmul = STUBS["matmul"]
max = STUBS["max"]
maximum = STUBS["maximum"]
mean = STUBS["mean"]
min = STUBS["min"]
minimum = STUBS["minimum"]
rsqrt = STUBS["rsqrt"]
sigmoid = STUBS["sigmoid"]
sin = STUBS["sin"]
size = STUBS["size"]
softmax = STUBS["softmax"]
sqrt = STUBS["sqrt"]
stack = STUBS["stack"]
sum = STUBS["sum"]
tanh = STUBS["tanh"]
var = STUBS["var"]
where = STUBS["where"]

__all__ = [
    "FusedFunction",
    "FusileError",
    "Tensor",
    "abs",
    "arange",
    "astype",
    "bf16",
    "bool_",
    "ceil",
    "concat",
    "cos",
    "erf",
    "exp",
    "exp2",
    "expand_as",
    "expm1",
    "f16",
    "f32",
    "f64",
    "floor",
    "from_source",
    "fused",
    "i32",
    "i64",
    "index",
    "log",
    "log1p",
    "log2",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "rsqrt",
    "sigmoid",
    "sin",
    "size",
    "softmax",
    "sqrt",
    "stack",
    "sum",
    "tanh",
    "var",
    "where",
]
__version__ = "0.1.0"
