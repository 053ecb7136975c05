"""Vocabulary trimming: keep the wordpieces the domain uses, rebuild tokenizer.json and the embedding table together.

Hand-written because no library trims a WordPiece tokenizer and its embedding matrix as one consistent edit.
Any text still tokenizes: every single-character piece (with and without the ``##`` prefix) is kept, so a word whose
pieces were dropped is split into smaller kept pieces, never turned into [UNK] when it was not before. A text whose
original pieces were all kept tokenizes exactly as before; `trim` reports how many eval texts that covers and the
label agreement of the trimmed model with the untrimmed one. With ``alias``, dropped pieces stay in the tokenizer
pointing at their nearest kept piece's row, so every text keeps its pieces and only rare pieces share a row.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _train
from .._fs import atomic_dir
from ..data import load_dataset, read_texts
from ..errors import ModelError
from ..models import load_checkpoint, save_checkpoint
from ..recipe import TrimConfig
from ..runtime.predictor import load_tokenizer
from .augment import nearest

__all__ = ["trim_vocab"]


def _kept_ids(vocab: dict[str, int], counts: Counter[int], config: TrimConfig, special: set[int]) -> list[int]:
    """Old token ids to keep, in their old order (so the new ids keep the old relative order)."""
    used = {i for i, c in counts.items() if c >= config.min_count}
    if config.max_tokens is not None:
        used = {i for i, _ in counts.most_common(config.max_tokens) if counts[i] >= config.min_count}
    chars = {i for tok, i in vocab.items() if len(tok.removeprefix("##")) == 1}
    return sorted(used | chars | special)


def _aliases(vocab: dict[str, int], kept: list[int], table: np.ndarray) -> dict[int, int]:
    """Each dropped id -> the kept id nearest by cosine, a `##` continuation only ever to a continuation."""
    id_to_token = {i: t for t, i in vocab.items()}
    keep = set(kept)
    out: dict[int, int] = {}
    for continuation in (False, True):
        pool = [i for i in kept if id_to_token[i].startswith("##") == continuation]
        dropped = [i for i in sorted(id_to_token) if i not in keep and id_to_token[i].startswith("##") == continuation]
        best = nearest(table, dropped, pool, 1)[:, 0]
        out.update({d: pool[j] for d, j in zip(dropped, best, strict=True)})
    return out


def _remap_tokenizer(raw: dict[str, Any], old_to_new: dict[int, int], aliases: dict[int, int]) -> dict[str, Any]:
    """The same tokenizer JSON with the kept pieces renumbered (every id that names a piece), plus each alias
    (a dropped piece) under the new id of the piece it stands for."""
    out = copy.deepcopy(raw)
    id_to_token = {i: t for t, i in raw["model"]["vocab"].items()}
    out["model"]["vocab"] = {id_to_token[old]: new for old, new in sorted(old_to_new.items(), key=lambda kv: kv[1])}
    out["model"]["vocab"].update({id_to_token[old]: old_to_new[to] for old, to in aliases.items()})
    for token in out.get("added_tokens") or []:
        token["id"] = old_to_new[token["id"]]
    post = out.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [old_to_new[i] for i in special["ids"]]
    if out.get("padding"):
        out["padding"]["pad_id"] = old_to_new[out["padding"]["pad_id"]]
    return out


def trim_vocab(src: Path, out: Path, config: TrimConfig, *, force: bool = False) -> Path:
    """Trim the checkpoint ``src``'s vocabulary to what ``config.data``'s train texts (and ``config.unlabelled``'s)
    use; write it to ``out``."""
    ckpt = load_checkpoint(Path(src))
    raw = json.loads((ckpt.path / "tokenizer.json").read_text(encoding="utf-8"))
    if raw.get("model", {}).get("type") != "WordPiece":
        raise ModelError(f"vocabulary trimming supports WordPiece tokenizers; `{src}` has {raw['model'].get('type')}")
    dataset = load_dataset(config.data)
    tok = load_tokenizer(json.dumps(raw), ckpt.max_length)
    tok.no_padding()
    counts: Counter[int] = Counter()
    more = read_texts(Path(config.unlabelled)) if config.unlabelled else ()
    for enc in tok.encode_batch([*dataset.train.texts, *more]):
        counts.update(enc.ids)
    special = {t["id"] for t in raw.get("added_tokens") or []}
    kept = _kept_ids(raw["model"]["vocab"], counts, config, special)
    old_to_new = {old: new for new, old in enumerate(kept)}
    model = ckpt.model
    old_emb = model.encoder.embeddings.word_embeddings
    table = old_emb.weight.detach().float().numpy()
    aliases = _aliases(raw["model"]["vocab"], kept, table) if config.alias else {}
    new_raw = _remap_tokenizer(raw, old_to_new, aliases)

    new_emb = torch.nn.Embedding(len(kept), old_emb.embedding_dim, padding_idx=old_to_new.get(old_emb.padding_idx or 0))
    new_emb.weight.data.copy_(old_emb.weight.data[torch.tensor(kept)])
    trimmed = copy.deepcopy(model)
    trimmed.encoder.embeddings.word_embeddings = new_emb
    trimmed.encoder.config.vocab_size = len(kept)

    check = _check(model, trimmed, raw, new_raw, list(dataset.eval.texts), ckpt.max_length, old_to_new)
    meta = {
        **ckpt.meta,
        "trim": {
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "data"},
            "vocab_before": len(raw["model"]["vocab"]),
            "vocab_after": len(kept),
            "unlabelled_rows": len(more),
            "aliases": len(aliases),
            "check": check,
        },
    }
    with atomic_dir(Path(out), force=force) as tmp:
        (tmp / "tokenizer.json").write_text(json.dumps(new_raw, ensure_ascii=False))
        save_checkpoint(trimmed, tmp / "ckpt", tmp / "tokenizer.json", ckpt.labels, ckpt.max_length, meta)
        for f in (tmp / "ckpt").iterdir():
            f.replace(tmp / f.name)
        (tmp / "ckpt").rmdir()
    return Path(out)


def _check(
    model: Any, trimmed: Any, raw: dict, new_raw: dict, texts: list[str], max_length: int, old_to_new: dict[int, int]
) -> dict:
    """Eval texts split into the same pieces; of those, texts whose every piece kept its own row (no alias); and
    label agreement of trimmed vs untrimmed."""
    old_tok = load_tokenizer(json.dumps(raw), max_length)
    new_tok = load_tokenizer(json.dumps(new_raw), max_length)
    old_tok.no_padding()
    new_tok.no_padding()
    pairs = list(zip(old_tok.encode_batch(texts), new_tok.encode_batch(texts), strict=True))
    same = sum(a.tokens == b.tokens for a, b in pairs)
    own_rows = sum(a.tokens == b.tokens and [old_to_new.get(i) for i in a.ids] == b.ids for a, b in pairs)
    before = _train.predict_logits(model, load_tokenizer(json.dumps(raw), max_length), texts).argmax(1)
    after = _train.predict_logits(trimmed, load_tokenizer(json.dumps(new_raw), max_length), texts).argmax(1)
    return {
        "eval_rows": len(texts),
        "identical_tokenization": same / len(texts),
        "identical_ids": own_rows / len(texts),
        "label_agreement": float(np.mean(before == after)),
    }
