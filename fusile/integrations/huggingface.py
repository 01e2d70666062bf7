"""Hugging Face transformers: fusile's attention, RMSNorm and SwiGLU MLP in a model.

    from fusile.integrations import huggingface
    huggingface.apply(model)   # attention, rms_norm, mlp, loss: each can be turned off
    huggingface.apply_to(transformers.LlamaForCausalLM)   # every model of the class, from now

The norms and MLPs of the Llama, Mistral, Qwen2, Qwen3, Gemma 2 and Gemma 3 families are
patched per module (this model's, not the class): RMSNorm runs fusile.stdlib.rms_norm (one
rounding of x * rstd * weight, where Llama's transformers code rounds the normalised x first;
Gemma's scales by 1 + weight, which for a 16-bit model is rounded to the model's dtype before
the kernel, where transformers keeps it in float32), the MLP down(act(gate(x)) * up(x)) with
fusile's fused gate: swiglu for SiLU, geglu for GELU (exact, or tanh-approximated as Gemma's
gelu_pytorch_tanh).

Registers "fusile" with transformers' AttentionInterface (and sdpa's mask rules with its
AttentionMaskInterface, so the mask is left out wherever sdpa would rely on `is_causal`). A
call fusile handles runs fusile.stdlib.attention: GQA, causal (bottom-right, and the top-left
alignment transformers asks for when prefilling a static cache), sliding windows and
soft-capping, decoding (one query row) included. Where transformers builds a mask (padding,
a partly filled static cache while decoding, and always while torch.compile traces), fusile
reads sdpa's boolean mask in its flash kernels, as sdpa applies it (the mask holds the causal
and window structure; a row it leaves no key gets zeros). A call it does not handle (a
non-boolean mask; dropout; attention weights requested) goes to transformers' sdpa, logged
once per reason: never a wrong answer.

`rope=True` also runs rotary embeddings through fusile.stdlib.apply_rotary_pos_emb (q and k
in one kernel). transformers' attention calls its modeling module's apply_rotary_pos_emb, a
module function, so this replaces it for every model of the family in the process, as
Liger's patching does; it is off by default.

`loss=True` (the default) sets the model's loss_function to a causal-LM loss on
fusile.stdlib.cross_entropy: labels shifted as transformers shifts them, the logits read in
their own dtype (transformers first makes a float32 copy of them, and torch's cross-entropy
saves a float32 log-softmax of the same size for its backward; fusile saves one float32
log-sum-exp per row).

`linear_loss=True` (the default) goes further for a causal LM in training mode given labels:
its forward computes the loss from the last hidden states and the LM head's weight with
fusile.stdlib.linear_cross_entropy (Gemma 2's final-logit soft-capping included), so the
(tokens x vocab) logits are never made, and returns `logits=None`, as Liger's patched
forwards do. In eval mode, or without labels, the forward is transformers' own.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
from typing import Any

import torch

from fusile.stdlib import activations, ops
from fusile.stdlib.attention import attention as fused_attention
from fusile.stdlib.cross_entropy import cross_entropy
from fusile.stdlib.linear_cross_entropy import linear_cross_entropy
from fusile.stdlib.rope import apply_rotary_pos_emb as fused_rotary

FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma2", "Gemma3")
_GATES = {"silu": None, "swish": None, "gelu": "none", "gelu_pytorch_tanh": "tanh",
          "gelu_new": "tanh"}  # the MLP's activation -> geglu's approximation (None: swiglu)

NAME = "fusile"
_log = logging.getLogger(__name__)
_said: set[str] = set()


def fusile_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs: Any
                             ) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (b, heads, q, d), key and value (b, kv_heads,
    kv, d); returns (b, q, heads, d) and no weights."""
    why = _unsupported(attention_mask, dropout, kwargs)
    if why is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if why not in _said and not torch.compiler.is_compiling():  # Dynamo cannot trace it
            _said.add(why)
            _log.info("fusile attention: %s; this call runs transformers' sdpa", why)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None:  # sdpa's rule: the mask holds causality, windows, padding
        out = fused_attention(query, key, value, scale=scaling,
                              softcap=kwargs.get("softcap") or None,
                              mask=attention_mask[:, :, :, :kv_len])
        return out.transpose(1, 2).contiguous(), None
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and q_len > 1  # one row: every cached key (sdpa does the same)
    lens = None
    if causal and kv_len != q_len:
        # no mask and more keys than queries: transformers' static-cache prefill, whose keys
        # past q_len are empty slots; sdpa's is_causal aligns top-left, i.e. these q_len
        lens = torch.full((query.shape[0],), q_len, dtype=torch.int32, device=query.device)
    out = fused_attention(query, key, value, causal=causal, scale=scaling,
                          window=kwargs.get("sliding_window") or None,
                          softcap=kwargs.get("softcap") or None, cache_seqlens=lens)
    return out.transpose(1, 2).contiguous(), None


def _unsupported(mask: torch.Tensor | None, dropout: float, kwargs: dict) -> str | None:
    if mask is not None and (mask.dtype != torch.bool or mask.dim() != 4):
        return "an attention mask that is not sdpa's boolean (batch, heads, q, kv) one"
    if dropout:
        return "attention dropout"
    if kwargs.get("output_attentions"):
        return "attention weights requested"
    if kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None:
        return "a position bias or attention sinks"
    return None


def register() -> None:
    """Make "fusile" an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, fusile_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def _rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return ops.rms_norm(hidden_states, hidden_states.shape[-1], self.weight,
                        self.variance_epsilon)


def _gemma_rms_norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = (1.0 + self.weight.float()).to(hidden_states.dtype)
    return ops.rms_norm(hidden_states, hidden_states.shape[-1], weight, self.eps)


def _swiglu_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(activations.swiglu(self.gate_proj(x), self.up_proj(x)))


def _geglu_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(activations.geglu(self.gate_proj(x), self.up_proj(x),
                                            self._fusile_approximate))


def _activation(config: Any) -> str:
    return str(getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", ""))


def _rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1), fused."""
    return fused_rotary(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                   num_items_in_batch: torch.Tensor | int | None = None,
                   ignore_index: int = -100, shift_labels: torch.Tensor | None = None,
                   **kwargs: Any) -> torch.Tensor:
    """transformers' ForCausalLMLoss (shift, flatten, mean or sum over num_items_in_batch)
    on fusile's cross-entropy, without the float32 copy of the logits."""
    if shift_labels is None:
        shift_labels = _shifted(labels, ignore_index)
    target = shift_labels.reshape(-1).to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = cross_entropy(logits.reshape(-1, vocab_size), target, ignore_index=ignore_index,
                         reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _shifted(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Causal-LM targets: tokens < n predict token n; the last position predicts nothing."""
    return torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _linear_loss_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    """A causal LM's forward whose training loss never makes the logits (module docstring).
    The arguments go to the model by the names the caller's release uses (past_key_values
    became cache); positional ones are named by the stock forward's signature."""
    if args:
        names = inspect.signature(self._fusile_forward).parameters
        kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
    labels = kwargs.get("labels")
    if labels is None or not self.training:
        return self._fusile_forward(**kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    kwargs.pop("labels")
    kwargs.pop("logits_to_keep", None)  # no logits are made
    out = self.model(**kwargs)
    hidden = out.last_hidden_state
    shift = kwargs.get("shift_labels")
    target = (_shifted(labels) if shift is None else shift).to(hidden.device)
    items = kwargs.get("num_items_in_batch")
    loss = linear_cross_entropy(hidden, self.lm_head.weight, target, self.lm_head.bias,
                                softcap=getattr(self.config, "final_logit_softcapping", None),
                                reduction="mean" if items is None else "sum")
    if items is not None:
        loss = loss / (items.to(loss.device) if torch.is_tensor(items) else items)
    # the model's cache, hidden states and attentions, under this release's field names
    return CausalLMOutputWithPast(loss=loss, logits=None,
                                  **{k: v for k, v in out.items() if k != "last_hidden_state"})


def apply(model: Any, attention: bool = True, rms_norm: bool = True, mlp: bool = True,
          rope: bool = False, loss: bool = True, linear_loss: bool = True) -> Any:
    """Run `model`'s attention (transformers' set_attn_implementation), RMSNorms and gated
    MLPs through fusile, with `rope` its family's rotary embeddings (process-wide: see the
    module's docstring), with `loss` its causal-LM loss, and with `linear_loss` a training
    loss that never makes the logits; returns the model. Modules of other families are left
    as they are."""
    if loss and hasattr(model, "loss_function"):
        model.loss_function = causal_lm_loss
    if linear_loss and type(model).__name__.endswith("ForCausalLM") and \
            hasattr(model, "lm_head") and hasattr(model, "model"):
        model._fusile_forward = getattr(model, "_fusile_forward", model.forward)
        model.forward = types.MethodType(_linear_loss_forward, model)
    elif not linear_loss and hasattr(model, "_fusile_forward"):  # applied before with it on
        model.forward = model._fusile_forward
    if attention:
        register()
        model.set_attn_implementation(NAME)
    for m in model.modules():
        name = type(m).__name__
        family = next((f for f in FAMILIES if name.startswith(f)), None)
        if family is None:
            continue
        module = sys.modules[type(m).__module__]
        if rope and getattr(module, "apply_rotary_pos_emb", _rotary) is not _rotary:
            module.apply_rotary_pos_emb = _rotary  # type: ignore[attr-defined]
        if rms_norm and name == f"{family}RMSNorm":
            gemma = family.startswith("Gemma")
            m.forward = types.MethodType(_gemma_rms_norm_forward if gemma else
                                         _rms_norm_forward, m)
        elif mlp and name == f"{family}MLP" and _activation(m.config) in _GATES:
            approximate = _GATES[_activation(m.config)]
            if approximate is None:
                m.forward = types.MethodType(_swiglu_mlp_forward, m)
            else:
                m._fusile_approximate = approximate
                m.forward = types.MethodType(_geglu_mlp_forward, m)
    return model


def apply_to(model_class: Any, **options: bool) -> Any:
    """Patch every model of `model_class` made from now on, as apply() patches one
    (`options` as apply's): its __init__ runs apply on the new model, and from_pretrained
    runs it again once the weights are loaded (loading may reset the forwards of layers that
    transformers can swap for hub kernels). Returns the class; a second call changes the
    options."""
    init = getattr(model_class.__init__, "_fusile_init", model_class.__init__)
    load = getattr(model_class.from_pretrained, "_fusile_load",
                   model_class.from_pretrained.__func__)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is model_class:  # a subclass's own __init__ ends later
            apply(self, **options)

    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        model = load(cls, *args, **kwargs)
        if type(model) is model_class:  # again: loading may reset the modules' forwards
            apply(model, **options)     # (transformers 5.25 resets its hub kernels' layers)
        return model

    __init__._fusile_init = init  # type: ignore[attr-defined]
    from_pretrained._fusile_load = load  # type: ignore[attr-defined]
    model_class.__init__ = __init__
    model_class.from_pretrained = classmethod(from_pretrained)
    return model_class
