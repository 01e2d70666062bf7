"""A Hugging Face causal LM's decode step (one new token per sequence against a static KV cache):
stock transformers (sdpa) eager, torch.compile(mode="reduce-overhead") of the stock model,
fusile (`huggingface.apply`) eager, fusile under torch.compile(mode="reduce-overhead"), and
fusile's eager step captured by hand in a CUDA graph; step time and tokens/s.

    python -m benchmarks.bench_hf_decode [--family Llama] [--layers 8] [--batches 1,8]
                                         [--prompt 4096] [--variants ...]

Random weights in bf16, bench_hf's Llama shape (hidden 2048, 16 heads, 4 KV heads,
intermediate 5632, vocab 128256). The cache holds `--prompt` tokens after a prefill; each
timed step decodes at the same position (so every step reads the same cache length: `rewind`
puts the cache's own write counter back first). Each
variant runs in a fresh process; one that fails prints its error and the others go on.
Time is the median of the timed steps' CUDA-event times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from benchmarks.bench_hf import SHAPE, TINY, _model, failure, median_ms, model_options

VARIANTS = ("stock", "compile", "fusile", "fusile-compile", "fusile-graph")


def run_one(variant: str, family: str, layers: int, batch: int, prompt: int, steps: int,
            device: str, shape: dict) -> dict:
    import torch
    from transformers import StaticCache

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = _model(family, layers, device, dtype, shape).eval()
    if variant.startswith("fusile"):
        from fusile.integrations import huggingface

        huggingface.apply(model)
    run = torch.compile(model, mode="reduce-overhead") if variant.endswith("compile") else model
    cache = StaticCache(config=model.config, max_cache_len=prompt + 8)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (batch, prompt), device=device, generator=g)
    tok = torch.randint(0, shape["vocab_size"], (batch, 1), device=device, generator=g)
    pos = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(
            prompt, device=device), use_cache=True)

        def step() -> torch.Tensor:
            rewind(cache, prompt)
            return run(input_ids=tok, past_key_values=cache, cache_position=pos,
                       use_cache=True).logits

        for _ in range(3):  # compile, tune, record the graphs
            want = step().float().clone()
        if variant == "fusile-graph":
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            graph.replay()
            err = float((out.float() - want).norm() / want.norm())

            def timed() -> None:
                graph.replay()
        else:
            err = 0.0

            def timed() -> None:
                step()
        ms = median_ms(timed, steps, device)
    return {"variant": variant, "family": family, "batch": batch, "prompt": prompt, "ms": ms,
            "tokens_s": batch / ms * 1e3, "graph_err": err,
            "logit": float(want[0, -1, :8].sum())}


def rewind(cache: Any, tokens: int) -> None:
    """Put a static cache back to `tokens` cached tokens, in place (so a captured graph does
    it too): transformers' static layers write each update where their own counter says
    (`cumulative_length`, advanced by every update), not at the given cache_position, so the
    same step run again and again would run off the cache's end (a device-side assert on a
    GPU). Caches without the counter write at cache_position: nothing to do."""
    for layer in getattr(cache, "layers", ()):
        n = getattr(layer, "cumulative_length", None)
        if hasattr(n, "fill_"):
            n.fill_(tokens)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    model_options(ap, VARIANTS, 50)
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--prompt", type=int, help="cached tokens (default 4096; --tiny: 16)")
    a = ap.parse_args(argv)
    shape = TINY if a.tiny else SHAPE
    layers = a.layers or (2 if a.tiny else 8)
    prompt = a.prompt or (16 if a.tiny else 4096)
    batches = [int(b) for b in a.batches.split(",")]
    if a.one:
        batch = batches[0]
        print(json.dumps(run_one(a.one, a.family, layers, batch, prompt, a.steps, a.device,
                                 shape)))
        return 0
    print(f"{a.family}, {layers} layers, {shape}, cache {prompt} tokens, decode steps")
    print(f"{'variant':<16} {'batch':>5} {'ms/step':>8} {'tokens/s':>9} {'vs stock':>9}")
    for batch in batches:  # each row as it comes (a run cut short keeps what it measured)
        base = None
        for v in a.variants.split(","):
            if a.device != "cuda" and v.endswith(("compile", "graph")):
                continue  # CUDA graphs need a GPU
            cmd = [sys.executable, "-m", "benchmarks.bench_hf_decode", "--one", v, "--family",
                   a.family, "--layers", str(layers), "--batches", str(batch), "--prompt",
                   str(prompt), "--steps", str(a.steps), "--device", a.device] + \
                (["--tiny"] if a.tiny else [])
            got = subprocess.run(cmd, capture_output=True, text=True)
            if got.returncode:
                print(f"{v:<16} {batch:>5} failed: {failure(got.stderr)[:300]}", flush=True)
                continue
            r = json.loads(got.stdout.strip().splitlines()[-1])
            base = base or r
            note = f"  graph err {r['graph_err']:.1e}" if v == "fusile-graph" else ""
            print(f"{v:<16} {batch:>5} {r['ms']:8.3f} {r['tokens_s']:9.0f} "
                  f"{r['tokens_s'] / base['tokens_s']:9.2f}  first logits {r['logit']:.3f}"
                  f"{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
