"""Shared pieces of the reliability tests: a tiny run (prepared data, checkpoint, counts, masks)
and the ways a file gets damaged."""
import datetime
import os
import random

import torch

from _nmt_cases import TINY_MODEL, prepare


def tiny_run(root):
    """{"prep", "ckpt", "counts", "masks"}: a 2-step tiny run under `root` and its files."""
    from neuronspec.ops import save_layer_masks as save_masks
    from neuronspec.nmt.config import TrainConfig
    from neuronspec.nmt.trainer import train
    from neuronspec.specialization.record import record
    from neuronspec.specialization.select import select_masks

    prepare(root)
    prep = str(root / "prep")
    cfg = TrainConfig(data=prep, out=str(root / "run"), model_args=TINY_MODEL, max_tokens=400, warmup=5, max_steps=2,
                      valid_every=0, valid_chrf_sentences=0, valid_max_sentences=4, progress=False)
    ckpt = train(cfg)["checkpoint"]
    counts = root / "counts.pt"
    rec = record(ckpt, prep, counts, max_sentences=8, progress=False)
    masks = root / "masks.pt"
    save_masks(select_masks(rec["counts"], rec["directions"], 0.9), masks, {"directions": rec["directions"]})
    return {"prep": prep, "ckpt": ckpt, "counts": str(counts), "masks": str(masks)}


def _largest_tensor(obj):
    best = None
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            if best is None or v.numel() * v.element_size() > best.numel() * best.element_size():
                best = v
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return best


def flip_tensor_bit(path):
    """Flip one bit inside the bytes of the file's largest tensor (the zip stores them raw)."""
    raw = bytearray(open(path, "rb").read())
    t = _largest_tensor(torch.load(path, weights_only=True))
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = raw.find(data)
    assert at >= 0 and raw.find(data, at + 1) < 0, "tensor bytes not found once in the file"
    raw[at + len(data) // 2] ^= 0x04
    open(path, "wb").write(bytes(raw))


def damage(path, kind):
    """Damage the file at `path` in one of DAMAGES' ways; returns the expected message part."""
    raw = open(path, "rb").read()
    if kind == "empty":
        open(path, "wb").close()
        return "is empty"
    if kind == "truncated":
        open(path, "wb").write(raw[: len(raw) // 2])
        return "is truncated or damaged"
    if kind == "random":
        open(path, "wb").write(random.Random(0).randbytes(4096))
        return "is not a torch file"
    if kind == "foreign":  # another program's pickle: objects weights_only loading refuses
        torch.save({"created": datetime.date(2026, 1, 1), "weights": torch.zeros(3)}, path)
        return "was not written by neuronspec"
    if kind == "bitflip":
        flip_tensor_bit(path)
        return "is damaged: its contents do not match the checksum"
    if kind == "folder":
        os.remove(path)
        os.mkdir(path)
        return "is a folder"
    raise ValueError(kind)


DAMAGES = ("empty", "truncated", "random", "foreign", "bitflip", "folder")
