"""fusile's attention inside a tiny random Hugging Face Llama (GQA) on the interpreter:
prefill logits and a few greedy decode steps, with a dynamic and a static cache, against the
same model on transformers' sdpa; padded batches, whose mask fusile's flash kernels read."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fusile.integrations import huggingface  # noqa: E402
from tests.numerics import assert_close  # noqa: E402


def _models(**extra):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64, **extra)
    stock = transformers.LlamaForCausalLM(cfg).eval()
    stock.set_attn_implementation("sdpa")
    fused = huggingface.apply(copy.deepcopy(stock))
    return stock, fused


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_llama_prefill_and_decode_match_sdpa(cache: str) -> None:
    stock, fused = _models()
    ids = torch.randint(0, 97, (2, 11))
    calls = []
    forward = huggingface.fused_attention

    def counted(*a, **k):
        calls.append(a[0].shape[2])  # query length
        return forward(*a, **k)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface, "fused_attention", counted)
        kw = {"max_new_tokens": 4, "do_sample": False, "return_dict_in_generate": True,
              "output_logits": True, "cache_implementation": cache}
        want = stock.generate(ids, **kw)
        got = fused.generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.logits, want.logits, strict=True):
        assert_close(g, w.double(), torch.float32, scale=4)
    assert 11 in calls  # the prefill ran on fusile
    # three decode steps, two layers, on fusile (a static cache's with transformers' mask)
    assert calls.count(1) == 3 * 2


def _family_model(family: str) -> Any:
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}TextConfig" if family == "Gemma3" else
                     f"{family}Config")
    cfg = config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 head_dim=16)
    model = getattr(transformers, f"{family}ForCausalLM")(cfg)
    try:
        model.set_attn_implementation("sdpa")
    except ValueError:  # Gemma 2 in transformers 5.25 has no sdpa path: its own eager one
        model.set_attn_implementation("eager")
    return model


def _gemma_weights(model: Any) -> Any:
    """Norm weights with values (Gemma's start at 0, the others' at 1)."""
    gemma = type(model).__name__.startswith("Gemma")
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            torch.nn.init.normal_(m.weight, 0.0 if gemma else 1.0, 0.1)
    return model


def _same_step(loss: torch.Tensor, ref: torch.Tensor, model: Any, stock: Any) -> None:
    """The loss and every parameter's gradient as the stock model's, in float32."""
    assert_close(loss, ref.double(), torch.float32, scale=4)
    for p, q in zip(stock.parameters(), model.parameters(), strict=True):
        assert_close(q.grad, p.grad.double(), torch.float32, scale=16)


@pytest.mark.parametrize("family", ["Llama", "Mistral", "Qwen2", "Qwen3", "Gemma2", "Gemma3"])
def test_training_step_matches_stock(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention, RMSNorms (Gemma's: 1 + weight) and gated MLPs (SwiGLU; Gemma's GeGLU with
    tanh GELU) on fusile: the loss and every parameter's gradient of a forward+backward step
    equal the stock model's; every norm and MLP module is fusile's."""
    stock = _gemma_weights(_family_model(family))
    fused = huggingface.apply(copy.deepcopy(stock))
    patched = [type(m).__name__ for m in fused.modules() if "forward" in vars(m)]
    want = [type(m).__name__ for m in fused.modules()
            if type(m).__name__ in (f"{family}ForCausalLM", f"{family}RMSNorm",
                                    f"{family}MLP")]  # the causal LM: its linear loss
    assert patched == want and f"{family}MLP" in want and f"{family}RMSNorm" in want
    calls = []
    attend = huggingface.fused_attention

    def counted(*a, **k):
        calls.append(k["softcap"])
        return attend(*a, **k)

    monkeypatch.setattr(huggingface, "fused_attention", counted)
    ids = torch.randint(0, 97, (2, 13))
    losses = []
    for model in (stock, fused):
        out = model(ids, labels=ids)
        out.loss.backward()
        losses.append(out.loss)
    _same_step(losses[1], losses[0], fused, stock)
    # both layers' attention ran on fusile (Gemma 2's with its logit soft-capping)
    assert calls == [50.0 if family == "Gemma2" else None] * 2, calls


@pytest.mark.parametrize("family", ["Llama", "Gemma3"])
def test_rope_patched_too(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """apply(rope=True) replaces the family's apply_rotary_pos_emb (process-wide, so the
    stock model runs first): the training step still matches, and the rotary embedding ran
    through fusile, q and k in one call per attention layer."""
    import sys

    stock = _family_model(family)
    fused = copy.deepcopy(stock)
    ids = torch.randint(0, 97, (2, 13))
    ref = stock(ids, labels=ids)
    ref.loss.backward()
    module = sys.modules[type(stock).__module__]
    monkeypatch.setattr(module, "apply_rotary_pos_emb", module.apply_rotary_pos_emb)
    calls = []
    fused_rotary = huggingface.fused_rotary

    def counted(*a, **k):
        calls.append(a[0].shape)
        return fused_rotary(*a, **k)

    monkeypatch.setattr(huggingface, "fused_rotary", counted)
    huggingface.apply(fused, rope=True)
    out = fused(ids, labels=ids)
    out.loss.backward()
    assert len(calls) == 2  # one per layer
    _same_step(out.loss, ref.loss, fused, stock)


def test_the_loss_is_fusiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """apply() sets the model's causal-LM loss to fusile's cross-entropy: shifted labels,
    ignored positions (-100) and a sum over num_items_in_batch as transformers computes them;
    loss=False leaves transformers' own."""
    stock = _family_model("Qwen2")
    fused = huggingface.apply(copy.deepcopy(stock), attention=False, rms_norm=False,
                              mlp=False, linear_loss=False)
    calls = []
    ce = huggingface.cross_entropy

    def counted(logits, target, **k):
        calls.append((tuple(logits.shape), k["reduction"]))
        return ce(logits, target, **k)

    monkeypatch.setattr(huggingface, "cross_entropy", counted)
    ids = torch.randint(0, 97, (2, 13))
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt the loss ignores
    for extra in ({}, {"num_items_in_batch": torch.tensor(17)}):
        want = stock(ids, labels=labels, **extra)
        got = fused(ids, labels=labels, **extra)
        want.loss.backward()
        got.loss.backward()
        _same_step(got.loss, want.loss, fused, stock)
    assert calls == [((26, 97), "mean"), ((26, 97), "sum")]
    assert fused.loss_function is huggingface.causal_lm_loss
    plain = huggingface.apply(copy.deepcopy(stock), loss=False)
    assert plain.loss_function is stock.loss_function


@pytest.mark.parametrize("family", ["Llama", "Gemma2"])
def test_linear_loss_never_makes_the_logits(family: str, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """In training mode with labels the patched forward takes the loss from the hidden states
    and the LM head (linear_cross_entropy; Gemma 2's final-logit soft-capping included):
    logits None, the lm_head module never called, loss and gradients as the stock model's,
    mean and sum over num_items_in_batch. In eval mode the forward is transformers' own."""
    stock = _gemma_weights(_family_model(family))
    fused = huggingface.apply(copy.deepcopy(stock), attention=False)
    if family == "Gemma2":
        assert fused.config.final_logit_softcapping
    heads = []
    fused.lm_head.register_forward_hook(lambda *a: heads.append(1))
    calls = []
    lce = huggingface.linear_cross_entropy

    def counted(h, w, t, b=None, **k):
        calls.append((tuple(h.shape), k["softcap"], k["reduction"]))
        return lce(h, w, t, b, **k)

    monkeypatch.setattr(huggingface, "linear_cross_entropy", counted)
    ids = torch.randint(0, 97, (2, 13))
    labels = ids.clone()
    labels[1, :3] = -100
    for extra in ({}, {"num_items_in_batch": torch.tensor(19)}):
        want = stock(ids, labels=labels, **extra)
        got = fused(ids, labels=labels, **extra)
        assert got.logits is None
        want.loss.backward()
        got.loss.backward()
        _same_step(got.loss, want.loss, fused, stock)
    cap = fused.config.final_logit_softcapping if family == "Gemma2" else None
    assert calls == [((2, 13, 64), cap, "mean"), ((2, 13, 64), cap, "sum")] and not heads
    fused.eval()
    with torch.no_grad():
        assert_close(fused(ids, labels=labels).logits, stock.eval()(ids).logits.double(),
                     torch.float32, scale=4)
    assert heads and len(calls) == 2
    again = huggingface.apply(fused, linear_loss=False)
    assert "forward" not in vars(again) or again.forward == again._fusile_forward


@pytest.mark.parametrize("family", ["Llama", "Gemma3"])
def test_patched_model_compiles_with_fullgraph(family: str) -> None:
    """torch.compile(fullgraph=True) of the patched model: no graph break, and its training
    step's loss and gradients equal the stock model's (while tracing, transformers always
    builds the mask, so attention takes sdpa there; norms, MLPs (Gemma's: 1 + weight, GeGLU)
    and the loss are fusile's ops)."""
    stock = _models()[0] if family == "Llama" else _gemma_weights(_family_model(family))
    fused = huggingface.apply(copy.deepcopy(stock))
    ids = torch.randint(0, 97, (2, 13))
    out = torch.compile(fused, fullgraph=True)(ids, labels=ids)
    out.loss.backward()
    ref = stock(ids, labels=ids)
    ref.loss.backward()
    _same_step(out.loss, ref.loss, fused, stock)


def test_apply_to_a_class_patches_its_pretrained_models(tmp_path, monkeypatch) -> None:
    """apply_to(LlamaForCausalLM): a model from from_pretrained comes patched (attention,
    norms, MLPs, loss) with its weights loaded; a second call changes the options."""
    cls = transformers.LlamaForCausalLM
    monkeypatch.setattr(cls, "__init__", cls.__init__)  # both undone after the test
    monkeypatch.setattr(cls, "from_pretrained", inspect.getattr_static(cls, "from_pretrained"))
    stock = _family_model("Llama")
    stock.save_pretrained(tmp_path)
    assert huggingface.apply_to(cls) is cls
    model = cls.from_pretrained(tmp_path)
    assert model.config._attn_implementation == "fusile"
    assert model.loss_function is huggingface.causal_lm_loss
    # per layer two norms and the MLP, the final norm, the causal LM's forward (linear loss)
    assert sum("forward" in vars(m) for m in model.modules()) == 2 * 3 + 2
    ids = torch.randint(0, 97, (2, 13))
    with torch.no_grad():
        assert_close(model(ids, labels=ids).loss, stock(ids, labels=ids).loss.double(),
                     torch.float32, scale=4)
    huggingface.apply_to(cls, mlp=False)
    assert sum("forward" in vars(m) for m in cls(stock.config).modules()) == 2 * 2 + 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_runs_on_fusile(side: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A padded batch: transformers builds sdpa's boolean mask and fusile's flash kernels read
    it. The logits equal sdpa's everywhere (a padded row that sees no key is zeros in both),
    and a training step's loss and gradients equal the stock model's."""
    stock, fused = _models()
    calls = []
    attend = huggingface.fused_attention

    def counted(*a, **k):
        calls.append(k["mask"] is not None)
        return attend(*a, **k)

    monkeypatch.setattr(huggingface, "fused_attention", counted)
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    if side == "left":
        mask[0, :3] = 0
    else:
        mask[1, -4:] = 0
    with torch.no_grad():
        want = stock(ids, attention_mask=mask).logits
        got = fused(ids, attention_mask=mask).logits
    assert_close(got, want.double(), torch.float32, scale=4)
    assert calls == [True, True]  # both layers, on fusile with the mask
    labels = ids.masked_fill(mask == 0, -100)
    stock.train()
    fused.train()
    for model in (stock, fused):
        model(ids, attention_mask=mask, labels=labels).loss.backward()
    ref = stock(ids, attention_mask=mask, labels=labels).loss
    out = fused(ids, attention_mask=mask, labels=labels).loss
    _same_step(out, ref, fused, stock)


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_cuda_llama_decode_matches_sdpa(cache: str) -> None:
    """The same on a GPU in bf16: the logits of the prefill and of each decode step, up to
    the first step where a near tie makes the two greedy generations pick different tokens."""
    stock, fused = (m.to("cuda", torch.bfloat16) for m in _models())
    ids = torch.randint(0, 97, (2, 11), device="cuda")
    kw = {"max_new_tokens": 4, "do_sample": False, "return_dict_in_generate": True,
          "output_logits": True, "cache_implementation": cache}
    with torch.no_grad():
        want, got = stock.generate(ids, **kw), fused.generate(ids, **kw)
    for step, (g, w) in enumerate(zip(got.logits, want.logits, strict=True)):
        assert_close(g, w.double(), torch.bfloat16, scale=2)
        if not torch.equal(got.sequences[:, 11 + step], want.sequences[:, 11 + step]):
            break
