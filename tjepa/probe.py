"""Frozen-encoder evaluation: linear probes against a random-init encoder and a bag of embeddings.

A JEPA has no generative head to test, so we ask what its embeddings make *linearly* readable:

- ``factor:*`` (tinytales): each ground-truth factor of a story from its mean-pooled
  embedding. ``semantic`` where a bag of words cannot read it (who is the friend: both names
  occur, only their roles differ), ``lexical`` where a word names it (a random-init encoder
  reads those well already, so they measure what survives training, not what it learned),
  and ``nonlinear`` for the ending read from the story *before* it is told: an XNOR of two
  sentences, which neither a random encoder nor a bag of words makes linearly readable from
  a mean pool, though it is the predictor's job more than the encoder's to say what comes
  next;
- ``forecast:ending`` (semantic, tinytales): that job is the predictor's. Given the prefix as
  context and mask tokens over the next ``FORECAST_HORIZON`` positions (one S-denoiser view),
  the mean of the predictor's outputs: does the model expect a happy or a sad ending?
- ``same_story`` (semantic, any corpus): were two chunks cut from the same story? from
  ``[a, b, |a − b|, a · b]`` of the two chunks' embeddings;
- ``token_identity`` (information): the input token from its contextual embedding;
- ``decoder_lens`` (information): that token readout, applied to the *predictor's* outputs at
  hidden positions — which words does the predictor "think" fill a span?

Every probe is scored for the trained encoder and for a random-init encoder of the same shape
(the bar a JEPA must clear), and, for document probes, for the mean of the trained model's
input token embeddings (what a bag of words already gives).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from tjepa import data
from tjepa.jepa import JEPA, encode_documents, mean_pool
from tjepa.masking import MaskingConfig, MaskSampler, forecast_batch
from tjepa.model import Encoder

MAX_PROBE_DOCUMENTS = 2000  # per split; enough for stable accuracies, seconds on a CPU
MAX_PROBE_TOKENS = 20_000
RANDOM_INITS = 3  # random-init twins per document probe
# The forecast asks about the same number of positions after every prefix: with mask tokens
# over the whole rest of the story, their count (the outcome's length) would tell the ending
# to a predictor that learned nothing. Every tinytales outcome is longer than this.
FORECAST_HORIZON = 24


@dataclass
class ProbeResult:
    name: str
    kind: str  # "semantic", "lexical", "nonlinear" or "information" (see the module docstring)
    trained: float
    random_init: float  # the mean over the random-init twins
    bag_of_embeddings: float | None = None
    random_init_std: float | None = None  # across the twins, when there are several
    chance: float | None = None
    n_train: int = 0
    n_val: int = 0


# --- features ------------------------------------------------------------------------------


@torch.no_grad()
def pooled(encoder: Encoder, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each document's tokens of the encoder's output: (B, D)."""
    return mean_pool(encode_documents(encoder, tokens, lengths).float(), lengths)


@torch.no_grad()
def bag_of_embeddings(encoder: Encoder, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Mean of the input token embeddings, no attention at all: (B, D)."""
    return mean_pool(encoder.embed(tokens), lengths)


def document_features(feature_fn, split: data.DocumentSplit, documents: np.ndarray,
                      block_size: int, limits: np.ndarray | None = None, batch_size: int = 64,
                      device: str = "cpu") -> Tensor:
    """Features of whole documents, or of their first ``limits[i]`` tokens: (N, D)."""
    out = []
    for start in range(0, len(documents), batch_size):
        chunk = slice(start, start + batch_size)
        tokens, lengths = split.batch(documents[chunk], block_size,
                                      None if limits is None else limits[chunk])
        out.append(feature_fn(tokens.to(device), lengths.to(device)).cpu())
    return torch.cat(out)


def chunk_pairs(split: data.DocumentSplit, documents: np.ndarray, block_size: int,
                seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """First and second halves of each document, paired with their own other half (label 1)
    or with the other half of a different document (label 0), half and half."""
    docs = [split.document(d)[: 2 * block_size].astype(np.int64) for d in documents]
    first = [d[: len(d) // 2] for d in docs]
    second = [d[len(d) // 2 :] for d in docs]
    rng = np.random.default_rng(seed)
    n = len(documents)
    same = rng.random(n) < 0.5
    partner = np.where(same, np.arange(n), (np.arange(n) + rng.integers(1, n, n)) % n)
    return first, [second[p] for p in partner], same.astype(np.int64)


def pair_features(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a, b, (a - b).abs(), a * b], dim=1)


# --- the linear probe ----------------------------------------------------------------------


def linear_probe(x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor,
                 weight_decay: float = 1e-3, max_iter: int = 200) -> float:
    """Validation accuracy of a linear readout fit on the training features."""
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    readout = fit_readout(x_train, y_train, weight_decay, max_iter, n_classes)
    return float((readout(x_val).argmax(1) == y_val).float().mean())


# --- the suite -----------------------------------------------------------------------------


def run_probes(model: JEPA, bins: data.TokenBins, block_size: int, masking: MaskingConfig,
                 seed: int = 0, device: str = "cpu", max_documents: int = MAX_PROBE_DOCUMENTS,
                 random_inits: int = RANDOM_INITS, progress: bool = True) -> list[ProbeResult]:
    """All probes for a trained JEPA, its random-init twins and the bag-of-embeddings baseline.

    Document probes score ``random_inits`` random-init twins and report their mean (and spread):
    one twin's score moves by a few points with its seed, as much as the gains we look for.
    The token probes, which no mechanism is judged by, use the first twin only."""
    random_models = [random_twin(model, seed + 12345 + k, device) for k in range(random_inits)]
    train_split, val_split = bins.split("train"), bins.split("val")
    rng = np.random.default_rng(seed)
    train_docs = np.sort(rng.permutation(len(train_split))[:max_documents])
    val_docs = np.arange(min(len(val_split), max_documents))
    encoders = {
        "trained": lambda t, n: pooled(model.target_encoder, t, n),
        **{f"random_init/{k}": (lambda t, n, m=m: pooled(m.target_encoder, t, n))
           for k, m in enumerate(random_models)},
        "bag_of_embeddings": lambda t, n: bag_of_embeddings(model.context_encoder, t, n),
    }
    steps = tqdm(total=4, desc="probes", disable=not progress, leave=False)
    splits = {"train": (train_split, train_docs), "val": (val_split, val_docs)}

    def features(limits=None):
        return {name: {s: document_features(fn, split, docs, block_size,
                                            None if limits is None else limits[s], device=device)
                       for s, (split, docs) in splits.items()}
                for name, fn in encoders.items()}

    whole = features()
    steps.update()
    results = []

    factors = bins.factors()
    if factors:
        contextual = factors.get("contextual", {})
        prefix_tokens = {s: np.asarray(factors["prefix_tokens"][s])[docs]
                         for s, (_, docs) in splits.items()} if "prefix_tokens" in factors \
            else None
        prefix = features(prefix_tokens) if prefix_tokens else None
        for factor, values in factors["values"].items():
            index = {v: i for i, v in enumerate(values)}
            y = {s: torch.tensor([index[v] for v in np.asarray(factors[s][factor])[docs]])
                 for s, (_, docs) in splits.items()}
            from_prefix = contextual.get(factor) == "prefix"
            feats = prefix if from_prefix else whole
            scores = _fold({name: linear_probe(f["train"], y["train"], f["val"], y["val"])
                            for name, f in feats.items()})
            kind = "nonlinear" if from_prefix else "semantic" if factor in contextual \
                else "lexical"
            sizes = dict(chance=_majority(y["val"]), n_train=len(y["train"]),
                         n_val=len(y["val"]))
            results.append(ProbeResult(f"factor:{factor}", kind, **scores, **sizes))
            if from_prefix:  # what the predictor expects after the prefix: the S-denoiser's task
                models = {"trained": model, **{f"random_init/{k}": m
                                               for k, m in enumerate(random_models)}}
                scores = {}
                for name, m in models.items():
                    f = {s: forecast_features(m, split, docs, block_size, prefix_tokens[s], device)
                         for s, (split, docs) in splits.items()}
                    scores[name] = linear_probe(f["train"], y["train"], f["val"], y["val"])
                scores = _fold(scores)
                results.append(ProbeResult(f"forecast:{factor}", "semantic", **scores, **sizes))
    steps.update()

    pair_scores = {}
    pairs = {split_name: chunk_pairs(split, docs, block_size, seed)
             for split_name, split, docs in (("train", train_split, train_docs),
                                             ("val", val_split, val_docs))}
    for name, fn in encoders.items():
        xs = {}
        for split_name, (first, second, _) in pairs.items():
            a = _features_of_chunks(fn, first, device)
            b = _features_of_chunks(fn, second, device)
            xs[split_name] = pair_features(a, b)
        pair_scores[name] = linear_probe(xs["train"], torch.from_numpy(pairs["train"][2]),
                                         xs["val"], torch.from_numpy(pairs["val"][2]))
    results.append(ProbeResult("same_story", "semantic", chance=_majority(
        torch.from_numpy(pairs["val"][2])), n_train=len(train_docs), n_val=len(val_docs),
        **_fold(pair_scores)))
    steps.update()

    token_results = token_probes(model, random_models[0], train_split, val_split, train_docs,
                                 val_docs, block_size, masking, seed, device)
    results.extend(token_results)
    steps.update()
    steps.close()
    return results


def token_probes(model: JEPA, random_model: JEPA, train_split, val_split, train_docs, val_docs,
                 block_size: int, masking: MaskingConfig, seed: int,
                 device: str) -> list[ProbeResult]:
    """Token identity from contextual embeddings, and the decoder lens on the predictor."""
    scores, lens = {}, {}
    for name, m in (("trained", model), ("random_init", random_model)):
        x_train, y_train = token_features(m, train_split, train_docs, block_size, device)
        x_val, y_val = token_features(m, val_split, val_docs, block_size, device)
        readout = fit_readout(x_train, y_train)
        scores[name] = float((readout(x_val).argmax(1) == y_val).float().mean())
        lens[name] = decoder_lens_accuracy(m, readout, val_split, val_docs, block_size,
                                           MaskSampler(masking, seed), device)
    return [
        ProbeResult("token_identity", "information", n_train=MAX_PROBE_TOKENS, **scores),
        ProbeResult("decoder_lens", "information", **lens),
    ]


def fit_readout(x: Tensor, y: Tensor, weight_decay: float = 1e-4, max_iter: int = 100,
                n_classes: int | None = None):
    """Multinomial logistic regression (L-BFGS, L2) on standardized features, returned as a
    function from features to logits."""
    n_classes = n_classes or int(y.max()) + 1
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda features: ((features.cpu().float() - mean) / std) @ w + b


@torch.no_grad()
def decoder_lens_accuracy(model: JEPA, readout, split, documents, block_size: int,
                          sampler: MaskSampler, device: str) -> float:
    """Top-1 accuracy of the token readout on the predictor's outputs at target positions."""
    correct = total = 0
    for batch in _masked_batches(split, documents, block_size, sampler):
        batch = batch.to(device)
        predictions, _ = model.predict(batch)
        valid = batch.target_valid
        truth = batch.tokens[batch.document[:, None], batch.target_positions][valid]
        correct += int((readout(predictions[valid]).argmax(1) == truth.cpu()).sum())
        total += int(valid.sum())
    return correct / max(total, 1)


@torch.no_grad()
def decoder_lens_examples(model: JEPA, readout, vocab: data.Vocabulary, split, documents,
                          block_size: int, sampler: MaskSampler, n: int = 3) -> list[dict]:
    """For a few views: the text with its hidden spans, what the predictor reads as, the truth."""
    batch = next(iter(_masked_batches(split, documents[:n], block_size, sampler)))
    predictions, _ = model.predict(batch)
    examples = []
    for v in range(min(n, len(batch.document))):
        valid = batch.target_valid[v]
        positions = batch.target_positions[v][valid]
        doc = batch.tokens[batch.document[v], : batch.lengths[batch.document[v]]]
        guessed = readout(predictions[v][valid]).argmax(1)
        examples.append({
            "text": vocab.decode(doc.tolist()),
            "hidden": vocab.decode_tokens(doc[positions].tolist()),
            "predicted": vocab.decode_tokens(guessed.tolist()),
            "positions": positions.tolist(),
        })
    return examples


def nearest_documents(features: Tensor, query: int, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` documents closest to document ``query`` by cosine similarity (itself excluded)."""
    x = F.normalize(features.float() - features.float().mean(0), dim=1)
    similarity = x @ x[query]
    similarity[query] = -2
    top = similarity.topk(k)
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))


def as_dicts(results: list[ProbeResult]) -> list[dict]:
    return [asdict(r) for r in results]


# --- helpers -------------------------------------------------------------------------------


def pad(ids: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([max(len(x), 1) for x in ids])
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
    return tokens, lengths


def _features_of_chunks(feature_fn, chunks: list[np.ndarray], device: str) -> Tensor:
    out = []
    for start in range(0, len(chunks), 64):
        tokens, lengths = pad(chunks[start : start + 64])
        out.append(feature_fn(tokens.to(device), lengths.to(device)).cpu())
    return torch.cat(out)


@torch.no_grad()
def token_features(model: JEPA, split, documents, block_size: int, device: str):
    """Layer-normed target-encoder token embeddings (what the predictor regresses) and ids."""
    xs, ys, count = [], [], 0
    for start in range(0, len(documents), 64):
        tokens, lengths = split.batch(documents[start : start + 64], block_size)
        tokens, lengths = tokens.to(device), lengths.to(device)
        h = encode_documents(model.target_encoder, tokens, lengths).float()
        h = F.layer_norm(h, h.shape[-1:])
        valid = torch.arange(tokens.shape[1], device=device) < lengths[:, None]
        xs.append(h[valid].cpu())
        ys.append(tokens[valid].cpu())
        count += int(valid.sum())
        if count >= MAX_PROBE_TOKENS:
            break
    return torch.cat(xs)[:MAX_PROBE_TOKENS], torch.cat(ys)[:MAX_PROBE_TOKENS]


@torch.no_grad()
def forecast_features(model: JEPA, split, documents, block_size: int, prefix_lengths: np.ndarray,
                      device: str = "cpu", batch_size: int = 64,
                      horizon: int = FORECAST_HORIZON) -> Tensor:
    """What the predictor expects after each document's prefix: the mean of its outputs over
    the next ``horizon`` positions, given the first ``prefix_lengths[i]`` tokens as context:
    (N, D)."""
    out = []
    for start in range(0, len(documents), batch_size):
        chunk = slice(start, start + batch_size)
        tokens, lengths = split.batch(documents[chunk], block_size)
        batch = forecast_batch(tokens, lengths, torch.as_tensor(prefix_lengths[chunk]),
                               horizon=horizon).to(device)
        predictions, _ = model.predict(batch)  # (B, P, D), the targets packed from slot 0
        n_targets = batch.target_valid.sum(1).clamp(min=1)  # no targets: a zero vector, no NaN
        out.append(mean_pool(predictions.float(), n_targets).cpu())
    return torch.cat(out)


def _masked_batches(split, documents, block_size: int, sampler: MaskSampler):
    for start in range(0, min(len(documents), 256), 64):
        tokens, lengths = split.batch(documents[start : start + 64], block_size)
        yield sampler(tokens, lengths)


def random_twin(model: JEPA, seed: int, device: str = "cpu") -> JEPA:
    """A JEPA of the same shape and objective as ``model``, freshly initialized from ``seed``."""
    torch.manual_seed(seed)
    return JEPA(model.config, model.objective).to(device).eval()


def _fold(scores: dict[str, float]) -> dict[str, float]:
    """``random_init/k`` scores into their mean (``random_init``) and spread."""
    twins = [v for k, v in scores.items() if k.startswith("random_init/")]
    folded = {k: v for k, v in scores.items() if not k.startswith("random_init/")}
    folded["random_init"] = float(np.mean(twins))
    if len(twins) > 1:
        folded["random_init_std"] = float(np.std(twins))
    return folded


def _majority(y: Tensor) -> float:
    return float(torch.bincount(y).max()) / len(y)
