"""A specialized native checkpoint for the deploy tests (issue #30), built without training."""
import torch

from _nmt_cases import TINY_MODEL
from neuronspec.data.corpus import PreparedData
from neuronspec.nmt.checkpoint import masks_state, save_checkpoint
from neuronspec.nmt.model import ModelConfig, Transformer, ffn_layer_names
from neuronspec.ops import TaskMasks


def specialized_checkpoint(root, prep, activation="relu"):
    """A specialized checkpoint (path) for the prepared folder ``prep``: random weights, non-zero
    biases, random masks keeping about 70 % of each layer per direction."""
    from neuronspec.nmt.config import TrainConfig

    data = PreparedData.load(prep)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(data.tokenizer), dropout=0.0, activation=activation, **TINY_MODEL)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)  # fairseq's init zeroes biases: here the folded constants are not 0
        sp = data.tokenizer.sp
        # byte pieces are most of this tiny vocabulary: zero embeddings (logits 0) so that the random
        # model writes real pieces, not invalid UTF-8 that decodes to U+FFFD whatever the bytes were
        model.embed.weight[[i for i in range(sp.get_piece_size()) if sp.is_byte(i)]] = 0.0
    names = ["-".join(d) for d in data.directions]
    g = torch.Generator().manual_seed(1)
    masks = {n: TaskMasks.from_dense(torch.rand(len(names), cfg.d_ff, generator=g) < 0.7, names)
             for n in ffn_layer_names(cfg)}
    tcfg = TrainConfig(data=str(prep), out=str(root / "run"), model_args=TINY_MODEL, max_steps=1)
    path = root / f"spec-{activation}.pt"
    save_checkpoint(path, {"step": 7, "config": tcfg.to_dict(), "model_config": cfg.to_dict(),
                           "model": model.state_dict(), "masks": masks_state(masks),
                           "data": {"prep": str(prep), "directions": [list(d) for d in data.directions]}})
    return str(path)
