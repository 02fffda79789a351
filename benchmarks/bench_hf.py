"""Wrapped vs unwrapped Hugging Face model speed: a tiny random M2M100, or a tiny Llama with
LoRA on every linear of its attention and FFN (`--family llama-lora`; docs/design.md §9).

The unwrapped model (plain `transformers`; with `peft` for llama-lora) is the baseline; the
same weights (and adapters) are wrapped by
`neuronspec.hf.wrap` and run dense (no masks), with full masks, with random masks keeping a
fraction p of every FFN's neurons (one direction for the batch), and mixed (one of 4 directions
per sequence). Teacher-forced forward (no grad) and forward + backward, timed interleaved
(`_timing.measure`, median of the rounds); the ratio is baseline time / arm time (> 1: faster).

    python benchmarks/bench_hf.py                       # d 256, ffn 1024, 3+3 layers, 16 x 32 tokens
    python benchmarks/bench_hf.py --d 512 --ffn 2048 --out benchmarks/results/hf_cpu.json
    python benchmarks/bench_hf.py --family llama-lora    # LoRA inside the masked FFNs (effective weight)
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing as tm  # noqa: E402

from neuronspec.hf import wrap  # noqa: E402
from neuronspec.ops import TaskMasks  # noqa: E402

DIRECTIONS = ["en-de", "de-en", "en-fr", "fr-en"]


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(d: int, ffn: int, layers: int, vocab: int):
    """A random Llama (SiLU gated FFNs) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM  # optional extra neuronspec[hf]

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=1)
    return LlamaForCausalLM(config).eval()


def models(family: str, d: int, ffn: int, layers: int, vocab: int):
    """(baseline, function wrapping a copy → (Specialization, model to call))."""
    if family == "m2m100":
        base = tiny_model(d, ffn, layers, vocab)
        model = copy.deepcopy(base)
        return base, lambda: (wrap(model, DIRECTIONS), model)
    import peft  # optional extra neuronspec[hf]

    config = peft.LoraConfig(r=16, target_modules=LORA_TARGETS, init_lora_weights=False)
    raw = tiny_llama(d, ffn, layers, vocab)
    model = copy.deepcopy(raw)
    base = peft.get_peft_model(raw, config)

    def wrapped():
        spec = wrap(model, DIRECTIONS)
        pm = peft.get_peft_model(model, config)
        pm.load_state_dict(base.state_dict())  # the same adapters
        return spec, pm
    return base, wrapped


def tiny_model(d: int, ffn: int, layers: int, vocab: int):
    """A random M2M100 (ReLU FFNs, dropout off) in eval mode."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration  # optional extra neuronspec[hf]

    torch.manual_seed(0)
    config = M2M100Config(vocab_size=vocab, d_model=d, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=ffn,
                          decoder_ffn_dim=ffn, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
                          activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2)
    return M2M100ForConditionalGeneration(config).eval()


def random_masks(spec, p: float, seed: int = 0) -> dict[str, TaskMasks]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, ffn in spec.layers.items():
        k = max(1, round(p * ffn.num_neurons))
        sets = [torch.randperm(ffn.num_neurons, generator=g)[:k] for _ in DIRECTIONS]
        out[name] = TaskMasks.from_indices(sets, ffn.num_neurons, DIRECTIONS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("m2m100", "llama-lora"), default="m2m100")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--tgt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    base, wrapped = models(args.family, args.d, args.ffn, args.layers, args.vocab)
    spec, model = wrapped()
    g = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(3, args.vocab, (args.batch, args.src_len), generator=g),
              "labels": torch.randint(3, args.vocab, (args.batch, args.tgt_len), generator=g)}
    if args.family == "llama-lora":  # decoder-only: the labels are the inputs
        inputs["labels"] = inputs["input_ids"]
    mixed = torch.arange(args.batch) % len(DIRECTIONS)
    arms = {"unwrapped": (base, None, None), "wrapped dense": (model, None, 0),
            "full masks": (model, 1.0, 0), "p=0.5": (model, 0.5, 0), "p=0.25": (model, 0.25, 0),
            "p=0.5 mixed x4": (model, 0.5, mixed)}
    masks = {p: random_masks(spec, p) for p in (1.0, 0.5, 0.25)}

    def call(arm, grad: bool):
        m, p, direction = arms[arm]

        def fn():
            if m is model:
                spec.set_masks(None if p is None else masks[p])
                spec.task_ids = direction
            if grad:
                m.zero_grad(set_to_none=True)
                m(**inputs).loss.backward()
            else:
                with torch.no_grad():
                    m(**inputs)
        return fn

    results = {}
    for mode, grad in (("forward", False), ("forward+backward", True)):
        stats = tm.measure({a: call(a, grad) for a in arms}, device, repeats=args.repeats)
        results[mode] = {}
        for a, s in stats.items():
            if isinstance(s, str):
                results[mode][a] = {"error": s}
                continue
            r, q1, q3 = tm.ratio_stats(stats["unwrapped"], s)
            results[mode][a] = {"ms": tm.sig(s.median * 1e3), "ratio": tm.sig(r, 3), "ratio_q1": tm.sig(q1, 3),
                                "ratio_q3": tm.sig(q3, 3)}
    print(f"tiny {args.family}: d {args.d}, ffn {args.ffn}, {args.layers} layers per stack, batch {args.batch} "
          f"x {args.src_len}/{args.tgt_len} tokens, CPU, {torch.get_num_threads()} threads; "
          "ratio = unwrapped time / arm time (median of interleaved rounds, [q1, q3])")
    print(f"{'arm':<16}" + "".join(f"{m:>34}" for m in results))
    for a in arms:
        cells = []
        for m in results:
            e = results[m][a]
            cells.append(f"{e['error'][:30]:>34}" if "error" in e else
                         f"{e['ms']:>10.2f} ms  {e['ratio']:.3f} [{e['ratio_q1']:.3f}, {e['ratio_q3']:.3f}]".rjust(34))
        print(f"{a:<16}" + "".join(cells))
    if args.out:
        tm.write_atomic(args.out, json.dumps({"args": vars(args), "machine": tm.machine_info(device),
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()
