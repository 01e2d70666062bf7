"""A Hugging Face causal LM's training step (forward + backward, no optimizer): stock
transformers (sdpa), Liger-Kernel, torch.compile of the stock model, fusile
(`huggingface.apply`), and fusile under torch.compile; step time, tokens/s and peak memory.

    python -m benchmarks.bench_hf [--family Llama] [--layers 8] [--batch 4] [--seq 2048]
                                  [--variants stock,liger,compile,fusile,fusile-compile]

Random weights in bf16, the issue's Llama shape by default (hidden 2048, 16 heads, 4 KV heads,
intermediate 5632, vocab 128256); labels are the inputs (every position counted). Each
variant runs in a fresh process (Liger patches transformers' modules process-wide); a variant
that fails prints its error and the others go on. Peak memory is the step's peak allocation
(weights and gradients included) after two warm-up steps; time is the median of the timed
steps' CUDA-event times.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

VARIANTS = ("stock", "liger", "compile", "fusile", "fusile-compile")
SHAPE = {"hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 4,
         "intermediate_size": 5632, "vocab_size": 128256}
TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 97}  # --tiny: a smoke test of the script


def _model(family: str, layers: int, device: str, dtype, shape: dict):
    import torch
    import transformers

    config = getattr(transformers, f"{family}Config")(num_hidden_layers=layers, **shape,
                                                      max_position_embeddings=8192)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, f"{family}ForCausalLM")(config).to(dtype)
    return model.train()


def median_ms(step, steps: int, device: str) -> float:
    """The median of `steps` calls of step(), in ms: CUDA-event times on a GPU."""
    import torch

    times = []
    for _ in range(steps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run_one(variant: str, family: str, layers: int, batch: int, seq: int, steps: int,
            device: str, shape: dict) -> dict:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if variant == "liger":
        import liger_kernel.transformers as lk

        getattr(lk, f"apply_liger_kernel_to_{family.lower()}")()
    model = _model(family, layers, device, dtype, shape)
    if variant.startswith("fusile"):
        from fusile.integrations import huggingface

        huggingface.apply(model)
    run = torch.compile(model) if variant.endswith("compile") else model
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), device=device)

    def step() -> float:
        out = run(input_ids=ids, labels=ids)
        out.loss.backward()
        return float(out.loss.detach())

    losses = [step() for _ in range(2)]  # compile, tune, allocate
    model.zero_grad(set_to_none=False)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(step, steps, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"variant": variant, "family": family, "ms": ms, "tokens_s": batch * seq / ms * 1e3,
            "peak_gib": peak, "loss": losses[0]}


def failure(stderr: str) -> str:
    """The line that says why a variant's process failed: its exception's last line (what
    follows it, such as CUDA's warnings at exit, would hide it), else its last line."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Failed|Unsupported)\b", ln):
            return ln
    return lines[-1] if lines else "(no output)"


def model_options(ap: argparse.ArgumentParser, variants: tuple[str, ...], steps: int) -> None:
    """The options of a model benchmark (this one, bench_hf_decode): family, layers, timed
    steps, variants, device, --tiny, and the hidden --one its subprocesses run."""
    ap.add_argument("--family", default="Llama", help="Llama, Mistral, Qwen2, Qwen3")
    ap.add_argument("--layers", type=int, help="default 8 (--tiny: 2)")
    ap.add_argument("--steps", type=int, default=steps, help=f"timed steps (default {steps})")
    ap.add_argument("--variants", default=",".join(variants))
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: a smoke test")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run this variant here, print its JSON


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(ap, VARIANTS, 10)
    ap.add_argument("--batch", type=int, help="default 4 (--tiny: 2)")
    ap.add_argument("--seq", type=int, help="default 2048 (--tiny: 64)")
    a = ap.parse_args(argv)
    small = {"layers": 2, "batch": 2, "seq": 64} if a.tiny else {}
    for name, default in (("layers", 8), ("batch", 4), ("seq", 2048)):
        if getattr(a, name) is None:
            setattr(a, name, small.get(name, default))
    if a.one:
        print(json.dumps(run_one(a.one, a.family, a.layers, a.batch, a.seq, a.steps,
                                 a.device, TINY if a.tiny else SHAPE)))
        return 0
    print(f"{a.family}, {a.layers} layers, batch {a.batch} x seq {a.seq}, "
          f"{'bf16' if a.device == 'cuda' else 'f32'}, forward+backward")
    print(f"{'':16s} {'step ms':>8s} {'tokens/s':>9s} {'peak GiB':>9s} {'loss':>8s}")
    for v in a.variants.split(","):
        cmd = [sys.executable, "-m", "benchmarks.bench_hf", "--one", v, "--family", a.family,
               "--layers", str(a.layers), "--batch", str(a.batch), "--seq", str(a.seq),
               "--steps", str(a.steps), "--device", a.device, *(["--tiny"] if a.tiny else [])]
        got = subprocess.run(cmd, capture_output=True, text=True)
        lines = got.stdout.strip().splitlines()
        if got.returncode or not lines:
            print(f"{v:16s} failed: {failure(got.stderr)[:300]}")
            continue
        r = json.loads(lines[-1])
        print(f"{v:16s} {r['ms']:8.1f} {r['tokens_s']:9.0f} {r['peak_gib']:9.2f} "
              f"{r['loss']:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
