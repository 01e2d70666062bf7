"""fusile dtypes <-> torch dtypes."""

from __future__ import annotations

from typing import Any

from fusile.dsl.types import DType


def to_torch(d: DType) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32,
            "f64": torch.float64, "i32": torch.int32, "i64": torch.int64,
            "bool": torch.bool}[d.name]
