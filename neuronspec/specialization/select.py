"""Activation counts → per-direction neuron sets (docs/design.md §1), and `neuronspec select`.

Cumulative threshold k ∈ (0, 1]: sort a^t descending (ties by neuron index, so the result is
deterministic) and keep the smallest prefix S with Σ_{n∈S} a_n ≥ k · Σ_n a_n.
k = 1 keeps exactly the neurons that fired at least once; a tiny k keeps the single most
active neuron. A direction whose counts are all zero (no tokens recorded, or no neuron ever
fired) has no defined set: that is a ValueError naming the layer and the direction.

    neuronspec select --counts runs/counts.pt --k 0.95 --out runs/masks.pt
    neuronspec select --counts runs/counts.pt --k-en2x-enc 0.9 --k-en2x-dec 0.95 --k-x2en-enc 0.95 --k-x2en-dec 0.9
    neuronspec select --counts runs/counts.pt --masks-like runs/masks.pt --random --out runs/random.pt
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

from neuronspec.files import check_output_file
from neuronspec.ops import load_layer_masks, save_layer_masks
from neuronspec.ops import TaskMasks

from .record import load_counts

log = logging.getLogger(__name__)


def check_k(k, name: str = "k") -> float:
    """k must be a real number in (0, 1]."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(float(k)):
        raise TypeError(f"{name}: expected a number in (0, 1], got {k!r}")
    if not 0.0 < float(k) <= 1.0:
        raise ValueError(f"{name}: must lie in (0, 1], got {k}")
    return float(k)


def select_neurons(counts: torch.Tensor, k: float) -> torch.Tensor:
    """Neuron ids (int64, sorted ascending) of the smallest top-count prefix holding ≥ k of
    the total activation mass. counts: integer [f], non-negative, not all zero."""
    k = check_k(k)
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1:
        raise ValueError(f"counts: expected a 1-D tensor [f], got {getattr(counts, 'shape', type(counts))}")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise TypeError(f"counts: expected an integer tensor, got {counts.dtype}")
    c = counts.detach().cpu().long()
    if c.numel() and int(c.min()) < 0:
        raise ValueError("counts: activation counts must be non-negative")
    total = int(c.sum())
    if total == 0:
        raise ValueError("counts: all zero, so no neuron set holds a fraction k of the activations")
    # stable sort on -c: equal counts keep ascending neuron index
    order = torch.sort(-c, stable=True).indices
    csum = torch.cumsum(c[order], 0)
    # exact in float64 for totals below 2**53; the threshold uses the same arithmetic everywhere
    need = k * float(total)
    m = int(torch.searchsorted(csum.double(), torch.tensor([need], dtype=torch.float64)).item()) + 1
    m = min(m, c.numel())
    return torch.sort(order[:m]).values


K_OPTIONS = ("k_en2x_enc", "k_en2x_dec", "k_x2en_enc", "k_x2en_dec", "k_en2x", "k_x2en", "k_enc", "k_dec")


def direction_k(layer: str, direction: str, pivot: str, k: float, **kopts: float | None) -> float:
    """The k that applies to one (layer, direction). The original selects with four k's,
    direction kind (pivot→x: en2x, x→pivot: x2en) × side (encoder / decoder layers); the coarser
    options are shorthands. Precedence: k_<kind>_<side> > k_<kind> > k_<side> > k."""
    unknown = set(kopts) - set(K_OPTIONS)
    if unknown:
        raise TypeError(f"direction_k: unknown options {sorted(unknown)}; expected some of {K_OPTIONS}")
    src, _, tgt = direction.partition("-")
    kind = "en2x" if src == pivot else "x2en" if tgt == pivot else None
    side = "enc" if layer.startswith("encoder") else "dec" if layer.startswith("decoder") else None
    for name in (f"k_{kind}_{side}", f"k_{kind}", f"k_{side}"):
        if kopts.get(name) is not None:
            return kopts[name]
    return k


def select_masks(counts: dict[str, torch.Tensor], directions: list[str], k: float = 0.95, *,
                 pivot: str = "en", **kopts: float | None) -> dict[str, TaskMasks]:
    """{layer: int counts [T, f]} → {layer: TaskMasks over the T directions}; `kopts`: the
    per-kind/side thresholds of direction_k (K_OPTIONS), None = not set."""
    check_k(k)
    for name, v in kopts.items():
        if name not in K_OPTIONS:
            raise TypeError(f"select_masks: unknown option {name!r}; expected one of {K_OPTIONS}")
        if v is not None:
            check_k(v, name)
    if not counts:
        raise ValueError("counts: no layers")
    out = {}
    for layer, c in counts.items():
        if c.dim() != 2 or c.shape[0] != len(directions):
            raise ValueError(f"counts[{layer!r}]: expected shape [{len(directions)}, f], got {tuple(c.shape)}")
        sets = []
        for t, d in enumerate(directions):
            kt = direction_k(layer, d, pivot, k, **kopts)
            try:
                sets.append(select_neurons(c[t], kt))
            except ValueError as e:
                raise ValueError(f"counts[{layer!r}] for direction {d}: {e}") from None
        out[layer] = _from_sets(sets, c.shape[1], directions)
    return out


def random_masks(like: dict[str, TaskMasks], seed: int = 0) -> dict[str, TaskMasks]:
    """Size-matched random control: for every layer and direction, |A_t| neurons drawn
    uniformly without replacement (torch generator seeded once; layers in the given order)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer, m in like.items():
        f = m.num_neurons
        sets = [torch.sort(torch.randperm(f, generator=g)[: int(s)]).values for s in m.sizes()]
        out[layer] = _from_sets(sets, f, list(m.names))
    return out


def _from_sets(sets: list[torch.Tensor], f: int, names: list[str]) -> TaskMasks:
    sizes = torch.tensor([len(s) for s in sets], dtype=torch.int64)
    offsets = torch.zeros(len(sets) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(sizes, 0).to(torch.int32)
    indices = torch.cat([s.to(torch.int32) for s in sets]) if sets else torch.zeros(0, dtype=torch.int32)
    return TaskMasks(indices, offsets, f, list(names))


def kept_table(masks: dict[str, TaskMasks]) -> list[dict]:
    """Per layer: mean / min / max kept fraction over directions."""
    rows = []
    for layer, m in masks.items():
        fr = m.fractions()
        rows.append({"layer": layer, "mean": float(fr.mean()), "min": float(fr.min()), "max": float(fr.max())})
    return rows


def format_kept(masks: dict[str, TaskMasks]) -> str:
    lines = [f"{'layer':<22} {'kept mean':>9} {'min':>6} {'max':>6}"]
    for r in kept_table(masks):
        lines.append(f"{r['layer']:<22} {r['mean']:>9.3f} {r['min']:>6.3f} {r['max']:>6.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--counts", required=True, help="counts file from `neuronspec record`")
    p.add_argument("--out", default=None, help="masks file (default: masks.pt / masks-random.pt next to --counts)")
    p.add_argument("--k", type=float, default=0.95, help="cumulative threshold in (0, 1] (default 0.95)")
    p.add_argument("--k-en2x-enc", type=float, default=None, help="k for pivot→x directions in encoder layers")
    p.add_argument("--k-en2x-dec", type=float, default=None, help="k for pivot→x directions in decoder layers")
    p.add_argument("--k-x2en-enc", type=float, default=None, help="k for x→pivot directions in encoder layers")
    p.add_argument("--k-x2en-dec", type=float, default=None, help="k for x→pivot directions in decoder layers")
    p.add_argument("--k-en2x", type=float, default=None, help="shorthand: k for pivot→x directions, both sides")
    p.add_argument("--k-x2en", type=float, default=None, help="shorthand: k for x→pivot directions, both sides")
    p.add_argument("--k-enc", type=float, default=None, help="shorthand: k for encoder layers, both kinds")
    p.add_argument("--k-dec", type=float, default=None, help="shorthand: k for decoder layers, both kinds")
    p.add_argument("--random", action="store_true",
                   help="size-matched random masks (control): sizes from --masks-like, else from the k selection")
    p.add_argument("--masks-like", default=None, help="with --random: copy the per-direction sizes of this masks file")
    p.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that holds something other "
                   "than masks")


def run(args) -> int:
    rec = load_counts(args.counts)
    directions, pivot = rec["directions"], rec["meta"].get("pivot", "en")
    kopts = {name: getattr(args, name) for name in K_OPTIONS}
    if args.masks_like and not args.random:
        raise ValueError("--masks-like: only used with --random")
    out = Path(args.out) if args.out else Path(args.counts).with_name("masks-random.pt" if args.random else "masks.pt")
    check_output_file(out, "out", [args.counts, args.masks_like], kind="masks", overwrite=args.overwrite)
    if args.random and args.masks_like:
        like, like_meta = load_layer_masks(args.masks_like)
        for layer, m in like.items():
            if list(m.names) != list(directions):
                raise ValueError(f"--masks-like: {args.masks_like} layer {layer} has directions {list(m.names)[:4]}..., "
                                 f"the counts' are {list(directions)[:4]}... ({len(directions)}); use masks selected "
                                 "from these counts")
        source = {"masks_like": str(args.masks_like), "like_meta": like_meta}
    else:
        like = select_masks(rec["counts"], directions, args.k, pivot=pivot, **kopts)
        source = {"k": args.k, **{n: v for n, v in kopts.items() if v is not None}}
    masks = random_masks(like, args.seed) if args.random else like
    meta = {"kind": "random" if args.random else "selected", "counts": str(args.counts), "directions": directions,
            "pivot": pivot, **source, **({"seed": args.seed} if args.random else {})}
    save_layer_masks(masks, out, meta)
    print(format_kept(masks))
    total = sum(int(m.indices.numel()) * 4 + int(m.offsets.numel()) * 4 for m in masks.values())
    print(f"saved {len(masks)} layers × {len(directions)} directions to {out} ({total / 1024:.1f} KiB of indices)")
    return 0
