"""Which ranking of residual channels hurts a teacher least when its width is cut (no retraining)?

    python benchmarks/width_ranking.py [--dataset sst2] [--width 256]

Cuts the GPU-trained teacher of `gpu_train.py` (from out/.edgeslm-cache) to --width channels with
`prune.narrow_hidden`, ranking channels by Taylor importance (what `distill` uses), by activation size (mean |LayerNorm
output|, Minitron's criterion), at random (seed 0), and by reversed Taylor, then scores each on the dev set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeslm import _train
from edgeslm.compress import prune
from edgeslm.models import load_checkpoint
from edgeslm.pipeline import Steps
from edgeslm.runtime.predictor import encode, load_tokenizer
from gpu_train import recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="sst2", choices=["sst2", "clinc150"])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--rows", type=int, default=1024, help="train rows that rank the channels")
    args = ap.parse_args()
    torch.manual_seed(0)
    steps = Steps(recipe(args.dataset), Path("out/.edgeslm-cache"), print)
    teacher, _ = steps.teacher()
    model = load_checkpoint(teacher).model
    tok = load_tokenizer((teacher / "tokenizer.json").read_text(), 64)
    train = steps.dataset.train
    rows = [int(i) for i in np.random.default_rng(0).permutation(len(train.texts))[: args.rows]]
    gold = torch.tensor(train.labels)
    feeds = [
        (_train.to_torch(encode(tok, [train.texts[i] for i in rows[b : b + 32]])), rows[b : b + 32])
        for b in range(0, len(rows), 32)
    ]
    _, _, taylor = prune.importance(model, feeds, lambda logits, idx: F.cross_entropy(logits, gold[idx]))
    norms = [model.encoder.embeddings.LayerNorm] + [
        n for layer in model.encoder.encoder.layer for n in (layer.attention.output.LayerNorm, layer.output.LayerNorm)
    ]
    size = torch.zeros_like(taylor)
    outputs: list[torch.Tensor] = []
    hooks = [n.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach())) for n in norms]
    with torch.no_grad():
        for feed, _ in feeds:
            outputs.clear()
            model(**feed)
            mask = feed["attention_mask"].unsqueeze(-1).float()
            for out in outputs:
                size += (out.abs() * mask).sum((0, 1))
    for h in hooks:
        h.remove()
    texts, labels = list(steps.dataset.eval.texts), np.array(steps.dataset.eval.labels)
    full = (_train.predict_logits(model, tok, texts).argmax(1) == labels).mean()
    print(f"{args.dataset} teacher, full width: {full:.4f}")
    rankings = {
        "taylor": taylor,
        "activation size": size,
        "random": torch.rand(len(taylor)),
        "reversed taylor": -taylor,
    }
    for name, scores in rankings.items():
        cut = load_checkpoint(teacher).model
        prune.narrow_hidden(cut, scores, args.width)
        accuracy = (_train.predict_logits(cut, tok, texts).argmax(1) == labels).mean()
        print(f"{name:>16} ranking, {args.width} channels: {accuracy:.4f}")


if __name__ == "__main__":
    main()
