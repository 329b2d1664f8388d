"""Frozen-encoder evaluation: linear probes, each against random init and the shortcuts a
skeptic would try first.

A JEPA has no generative head to test, so we ask what its embeddings make *linearly* readable,
and whether anything cheaper reads it as well. Every probe is scored for

- the trained target encoder (mean-pooled);
- ``random_init``: random-init twins of the same shape (the mean over them);
- shortcuts: ``length`` (the number of tokens, and its log), ``bag_of_words`` (token
  frequencies, hashed into ``BAG_OF_WORDS_BUCKETS``), ``positional_words`` (a bag of words
  for each quarter of the text: it sees where a story's opening or ending went) and
  ``bag_of_embeddings`` (the mean of the trained model's input embeddings: a bag of words
  through a learned table).

``best_baseline`` is the best of random init and the shortcuts; a probe's margin is
``trained − best_baseline``. The headline, the **training gain**, is what training added to
the random-init twin where no shortcut reaches: the mean of ``trained − random_init`` over the
document probes that no shortcut reads at ``SHORTCUT_LINE`` (0.9) or more (``in_headline``).
Beside it, ``passed`` names the probes the trained encoder reads better than its best
baseline, random init and every shortcut, by at least ``NOISE``. The probes, by kind:

- ``story``, what a whole story holds:
  - ``factor:*`` (tinytales) of a story whose words do not name it (who the friend is: both
    names occur, only their roles differ; the template names the friend at a fixed place);
  - ``same_story`` (any corpus): were two chunks cut from the same story? Each story is cut at
    a random point between 30 % and 70 % of its length, and a negative pairs the first chunk
    with the second chunk of the story whose second chunk is closest in length, so the two
    lengths do not tell; names shared by both chunks still do, which ``bag_of_words`` shows;
  - ``order:halves`` and ``order:words`` (any corpus): is the story as written, or are its
    two halves swapped at the sentence end nearest the middle (``halves``), or is a window of
    ``SHUFFLE_WINDOW`` tokens in its middle shuffled (``words``)? Both versions hold the same
    tokens, so length and bag of words read nothing by construction; ``positional_words``
    reads ``halves`` (the opening's words land in the back quarters);
- ``sentences`` (any corpus): the order and coherence of a story's sentences, built from raw
  text by ``tjepa.probe_texts`` (bigram shift, the order of a sentence pair, a sentence's
  position, the halves of a story after its opening, a sentence from another story); none of
  them leans on a story's opening, and all but the foreign sentence hold the same tokens
  either way;
- ``lexical``: a tinytales factor that a word names (a bag of words reads it; these measure
  what survives training);
- ``nonlinear``: the tinytales ending read from the story *before* it is told, an XNOR of two
  sentences that neither a random encoder nor a bag of words makes linearly readable;
- ``pretext``: ``forecast:ending`` asks the predictor, given the prefix and mask tokens over
  the next ``FORECAST_HORIZON`` positions, what comes next. That is the S denoiser's training
  task: it checks that the pretext task was learned, not what the representation holds, so
  it stays out of the headline, as do the ``information`` probes;
- ``information``: ``token_identity`` (the input token from its contextual embedding) and
  ``decoder_lens`` (that readout on the predictor's outputs at hidden positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from tjepa import data
from tjepa.jepa import encode_documents, mean_pool
from tjepa.masking import MaskingConfig, MaskSampler, forecast_batch
from tjepa.model import Encoder, Learner
from tjepa.probe_cache import BaselineCache, weights_digest
from tjepa.probe_texts import document_probe_texts, factor_labels, prefix_lengths, probe_documents

MAX_PROBE_DOCUMENTS = 2000  # per split; enough for stable accuracies, seconds on a CPU
MAX_PROBE_TOKENS = 20_000
RANDOM_INITS = 3  # random-init twins per document probe
BAG_OF_WORDS_BUCKETS = 1024
POSITION_PARTS = 4  # the stretches of a text that ``positional_words`` counts apart
# The forecast asks about the same number of positions after every prefix: with mask tokens
# over the whole rest of the story, their count (the outcome's length) would tell the ending
# to a predictor that learned nothing. Every tinytales outcome is longer than this.
FORECAST_HORIZON = 24
SHORTCUTS = ("length", "bag_of_words", "positional_words", "bag_of_embeddings")
SHORTCUT_LINE = 0.9  # a probe some shortcut reads this well is out of the headline
NOISE = 0.05  # a probe's margin that one seed's luck can give: no finding below it
HEADLINE_KINDS = ("story", "sentences", "nonlinear")  # the encoder's document probes
RENAMED_KINDS = {"semantic": "story", "discourse": "sentences"}  # eval.json's older names


@dataclass
class ProbeResult:
    name: str
    kind: str  # semantic, discourse, lexical, nonlinear, pretext or information (see above)
    trained: float
    random_init: float  # the mean over the random-init twins
    baselines: dict[str, float] = field(default_factory=dict)  # shortcut → accuracy
    random_init_std: float | None = None  # across the twins, when there are several
    chance: float | None = None
    n_train: int = 0
    n_val: int = 0

    @property
    def best_baseline(self) -> float:
        """The best of random init and the shortcuts: the bar the trained encoder must clear."""
        return max([self.random_init, *self.baselines.values()])

    @property
    def best_baseline_name(self) -> str:
        scores = {"random_init": self.random_init, **self.baselines}
        return max(scores, key=scores.get)

    @property
    def margin(self) -> float:
        return self.trained - self.best_baseline

    @classmethod
    def from_dict(cls, record: dict) -> ProbeResult:
        """A result from its ``as_dicts`` form (derived keys dropped)."""
        names = cls.__dataclass_fields__
        found = {k: v for k, v in record.items() if k in names}
        found["kind"] = RENAMED_KINDS.get(found["kind"], found["kind"])
        return cls(**found)

    @property
    def best_shortcut(self) -> float | None:
        """The best of the shortcuts alone (None for a probe that has none)."""
        return max(self.baselines.values(), default=None)

    @property
    def in_headline(self) -> bool:
        """An encoder's document probe that no shortcut reads at ``SHORTCUT_LINE`` or more."""
        return (self.kind in HEADLINE_KINDS and self.best_shortcut is not None
                and self.best_shortcut < SHORTCUT_LINE)


# --- features ------------------------------------------------------------------------------


@torch.no_grad()
def pooled(encoder: Encoder, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Mean over each document's tokens of the encoder's output: (B, D)."""
    return mean_pool(encode_documents(encoder, tokens, lengths).float(), lengths)


@torch.no_grad()
def bag_of_embeddings(encoder: Encoder, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Mean of the input token embeddings, no attention at all: (B, D)."""
    return mean_pool(encoder.embed(tokens), lengths)


def bag_of_words(tokens: Tensor, lengths: Tensor,
                 buckets: int = BAG_OF_WORDS_BUCKETS) -> Tensor:
    """Token frequencies (counts over the length), ids hashed into ``buckets``: (B, buckets)."""
    valid = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
    counts = torch.zeros(len(tokens), buckets, device=tokens.device)
    counts.scatter_add_(1, tokens % buckets, valid.float())
    return counts / lengths[:, None].float()


def positional_words(tokens: Tensor, lengths: Tensor, parts: int = POSITION_PARTS,
                     buckets: int = BAG_OF_WORDS_BUCKETS) -> Tensor:
    """Token frequencies in each of ``parts`` equal stretches of a text, ids hashed into
    ``buckets``: (B, parts · buckets). A bag of words that knows roughly where each word sits,
    so that words moved from a story's opening or ending to its middle show."""
    position = torch.arange(tokens.shape[1], device=tokens.device)[None, :]  # (1, T)
    valid = position < lengths[:, None]  # (B, T)
    part = (position * parts // lengths[:, None]).clamp(max=parts - 1)  # (B, T)
    counts = torch.zeros(len(tokens), parts * buckets, device=tokens.device)
    counts.scatter_add_(1, part * buckets + tokens % buckets, valid.float())
    return counts * parts / lengths[:, None].float()


def length_features(tokens: Tensor, lengths: Tensor) -> Tensor:
    """The number of tokens and its log: (B, 2)."""
    n = lengths.float()[:, None]
    return torch.cat([n, n.log()], dim=1)


def features_of(feature_fn, sequences: list[np.ndarray], device: str = "cpu",
                batch_size: int = 64) -> Tensor:
    """``feature_fn(tokens, lengths)`` over token sequences, in padded batches: (N, D), in the
    sequences' order. Batched in order of length, so that little of a batch is padding."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    out = []
    for start in range(0, len(sequences), batch_size):
        tokens, lengths = pad([sequences[i] for i in order[start : start + batch_size]])
        out.append(feature_fn(tokens.to(device), lengths.to(device)).cpu())
    features = torch.cat(out)
    return features[torch.from_numpy(np.argsort(order, kind="stable"))]


def features_once(feature_fn, sequences: list[np.ndarray], seen: dict[bytes, Tensor],
                  device: str = "cpu") -> Tensor:
    """``features_of``, with each sequence's features kept in ``seen`` (keyed by its tokens):
    a sequence met before is not read again. (N, D)."""
    keys = [np.asarray(s, dtype=np.int64).tobytes() for s in sequences]
    new = {k: s for k, s in zip(keys, sequences, strict=True) if k not in seen}
    if new:
        seen.update(zip(new, features_of(feature_fn, list(new.values()), device), strict=True))
    return torch.stack([seen[k] for k in keys])


def pair_features(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a, b, (a - b).abs(), a * b], dim=1)


def regression_targets(model: Learner, tokens: Tensor, lengths: Tensor) -> Tensor:
    """What the model regresses at every token of padded documents (B, T) → (B, T, D): its
    ``document_targets``; for a model that regresses nothing (the masked LM), its encoder's
    layer-normed output."""
    targets = model.document_targets(tokens, lengths)
    if targets is not None:
        return targets.float()
    h = encode_documents(model.target_encoder, tokens, lengths).float()
    return F.layer_norm(h, h.shape[-1:])


@torch.no_grad()
def token_share(targets: Callable[[Tensor, Tensor], Tensor], sequences: list[np.ndarray],
                device: str = "cpu", batch_size: int = 64) -> float:
    """How much of the embeddings ``targets(tokens, lengths)`` (B, T, D) their tokens'
    identity explains: 1 − (variance within each token id) / (total variance), over the
    positions whose token occurs at least twice. Near 1, an embedding is a code for its word,
    and predicting it at a hidden position means guessing the word; lower, it carries the
    context."""
    embeddings, ids = [], []
    for start in range(0, len(sequences), batch_size):
        tokens, lengths = pad(sequences[start : start + batch_size])
        tokens, lengths = tokens.to(device), lengths.to(device)
        valid = torch.arange(tokens.shape[1], device=device) < lengths[:, None]
        embeddings.append(targets(tokens, lengths).float()[valid].cpu())
        ids.append(tokens[valid].cpu())
    x, ids = torch.cat(embeddings), torch.cat(ids)
    _, inverse, counts = ids.unique(return_inverse=True, return_counts=True)
    repeated = counts[inverse] >= 2
    x, inverse = x[repeated], inverse[repeated]
    means = torch.zeros(len(counts), x.shape[1]).index_add_(0, inverse, x)
    means /= counts.clamp(min=1)[:, None].float()
    within = (x - means[inverse]).pow(2).sum(1).mean()
    total = (x - x.mean(0)).pow(2).sum(1).mean()
    return float(1 - within / total)


# --- the linear probe ----------------------------------------------------------------------


def linear_probe(x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor,
                 weight_decay: float = 1e-3, max_iter: int = 200) -> float:
    """Validation accuracy of a linear readout fit on the training features."""
    readout = fit_readout(x_train, y_train, weight_decay, max_iter)
    return float((readout.predict(x_val) == y_val).float().mean())


def fitted(features: dict[str, dict[str, Tensor]], labels: dict[str, Tensor]
           ) -> dict[str, float]:
    """Each model's accuracy from its features per split: a linear probe fit on ``train``,
    scored on ``val``."""
    return {model: linear_probe(f["train"], labels["train"], f["val"], labels["val"])
            for model, f in features.items()}


def as_result(accuracy: dict[str, float], labels: dict[str, Tensor], name: str,
              kind: str) -> ProbeResult:
    """A probe's result from each model's accuracy (``trained``, ``random_init/k``,
    shortcuts)."""
    accuracy = dict(accuracy)
    baselines = {k: accuracy.pop(k) for k in SHORTCUTS if k in accuracy}
    return ProbeResult(name, kind, **_fold(accuracy), baselines=baselines,
                       chance=_majority(labels["val"]), n_train=len(labels["train"]),
                       n_val=len(labels["val"]))


def score(features: dict[str, dict[str, Tensor]], labels: dict[str, Tensor], name: str,
          kind: str) -> ProbeResult:
    """A probe's result from features per model (``trained``, ``random_init/k``, shortcuts)
    and split: a linear probe fit on ``train``, scored on ``val``."""
    return as_result(fitted(features, labels), labels, name, kind)


# --- the suite -----------------------------------------------------------------------------


# name → features that read a text alone, no model: the shortcuts a saved report can take in
TEXT_SHORTCUTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "length": length_features,
    "bag_of_words": bag_of_words,
    "positional_words": positional_words,
}


def run_probes(model: Learner, bins: data.TokenBins, block_size: int, masking: MaskingConfig,
               seed: int = 0, device: str = "cpu", max_documents: int = MAX_PROBE_DOCUMENTS,
               random_inits: int = RANDOM_INITS, progress: bool = True,
               token_probes: bool = True, cache: bool = True) -> list[ProbeResult]:
    """All probes for a trained model, its random-init twins and the shortcuts.

    Document probes score ``random_inits`` twins and report their mean (and spread): one
    twin's score moves by a few points with its seed, as much as the gains we look for. The
    token probes use the first twin only. Models without a predictor (the masked-LM baseline)
    skip the probes that ask the predictor. ``token_probes=False`` leaves out the token-level
    probes (their readout over the whole vocabulary is most of the suite's time on real
    text): the document probes, semantic ones included, are unchanged. With ``cache``, the
    scores that do not depend on the trained weights (the twins' and the text-only
    shortcuts') are kept in the bins folder and read back by the next run
    (``tjepa.probe_cache``): the same numbers, computed once."""
    twins = [random_twin(model, seed + 12345 + k, device) for k in range(random_inits)]
    remembered = BaselineCache(bins.path, {"seed": seed, "max_documents": max_documents,
                                           "block_size": block_size,
                                           "device": torch.device(device).type}, enabled=cache)
    fingerprints = {"length": "length", "bag_of_words": f"bag_of_words/{BAG_OF_WORDS_BUCKETS}",
                    "positional_words": f"positional_words/{POSITION_PARTS}x"
                                        f"{BAG_OF_WORDS_BUCKETS}",
                    **{f"random_init/{k}": weights_digest(m.target_encoder)
                       for k, m in enumerate(twins)}}
    splits, docs, stories = probe_documents(bins, block_size, seed, max_documents)
    feature_fns = {
        "trained": lambda t, n: pooled(model.target_encoder, t, n),
        **{f"random_init/{k}": (lambda t, n, m=m: pooled(m.target_encoder, t, n))
           for k, m in enumerate(twins)},
        **TEXT_SHORTCUTS,
        "bag_of_embeddings": lambda t, n: bag_of_embeddings(model.context_encoder, t, n),
    }

    def known(probe: str) -> dict[str, float]:
        found = {m: remembered.get(probe, f"{m}@{f}") for m, f in fingerprints.items()}
        return {m: v for m, v in found.items() if v is not None}

    # an encoder reads each distinct text once: probes share texts (tinytales' factors all
    # read the whole stories; both order probes hold the same stories left as written)
    seen: dict[str, dict[bytes, Tensor]] = {n: {} for n in feature_fns if n not in TEXT_SHORTCUTS}

    def features(sequences: dict[str, list[np.ndarray]], probe: str
                 ) -> dict[str, dict[str, Tensor]]:
        """Each model's features of ``sequences``, but for those whose ``probe`` score is known."""
        skip = known(probe)
        return {name: {s: (features_of(fn, seqs, device) if name not in seen
                           else features_once(fn, seqs, seen[name], device))
                       for s, seqs in sequences.items()}
                for name, fn in feature_fns.items() if name not in skip}

    def scored(features: dict, labels: dict[str, Tensor], name: str, kind: str) -> ProbeResult:
        """``score``, with the remembered scores in and the new baselines' scores kept."""
        fresh = fitted(features, labels)
        for m, f in fingerprints.items():
            if m in fresh:
                remembered.put(name, f"{m}@{f}", fresh[m])
        return as_result(known(name) | fresh, labels, name, kind)

    results = []
    probes = document_probe_texts(bins, splits, docs, stories, block_size, seed)
    for name, kind, texts, labels in tqdm(probes, desc="document probes", disable=not progress,
                                          leave=False):
        labels = {s: torch.from_numpy(y) for s, y in labels.items()}
        parts = [features({s: texts[s][i] for s in splits}, name)
                 for i in range(len(texts["train"]))]
        results.append(scored(paired(parts), labels, name, kind))
    factors = bins.factors()
    if factors and model.can_predict:
        results += forecast_probes(model, twins, factors, docs, splits, block_size, device)
    if token_probes:
        results += probe_tokens(model, twins[0], splits["train"], splits["val"], docs["train"],
                                docs["val"], block_size, masking, seed, device, remembered)
    remembered.save()
    return results


def shortcut_scores(bins: data.TokenBins, block_size: int, seed: int = 0,
                    max_documents: int = MAX_PROBE_DOCUMENTS, progress: bool = True
                    ) -> dict[str, dict]:
    """The text-only shortcuts (``TEXT_SHORTCUTS``) on every document probe, on the texts and
    with the readout ``run_probes`` uses, and no model: probe → ``{"baselines": {shortcut:
    accuracy}, "kind", "n_train", "n_val"}``. They read no weights, so a saved report can take in a
    new one without its checkpoint (``python -m tjepa.eval --rescore-shortcuts``)."""
    splits, docs, stories = probe_documents(bins, block_size, seed, max_documents)
    scores = {}
    probes = document_probe_texts(bins, splits, docs, stories, block_size, seed)
    for name, kind, texts, labels in tqdm(probes, desc="shortcuts", disable=not progress,
                                          leave=False):
        labels = {s: torch.from_numpy(y) for s, y in labels.items()}
        parts = [{m: {s: features_of(fn, texts[s][i]) for s in splits}
                  for m, fn in TEXT_SHORTCUTS.items()} for i in range(len(texts["train"]))]
        scores[name] = {"baselines": fitted(paired(parts), labels), "kind": kind,
                        "n_train": len(labels["train"]), "n_val": len(labels["val"])}
    return scores


def paired(parts: list[dict[str, dict[str, Tensor]]]) -> dict[str, dict[str, Tensor]]:
    """A probe's features per model and split from those of its texts: one text's as they
    are, a pair's through ``pair_features``."""
    if len(parts) == 1:
        return parts[0]
    a, b = parts
    return {m: {s: pair_features(a[m][s], b[m][s]) for s in a[m]} for m in a}


def forecast_probes(model: Learner, twins: list[Learner], factors: dict, docs: dict, splits: dict,
                    block_size: int, device: str) -> list[ProbeResult]:
    """The predictor's forecast after a tinytales story's prefix, read for the factors that
    come from the prefix (``pretext``)."""
    contextual = factors.get("contextual", {})
    results = []
    for factor in factors["values"]:
        if contextual.get(factor) != "prefix":
            continue
        y = {s: torch.from_numpy(factor_labels(factors, factor, docs, s)) for s in splits}
        models = {"trained": model, **{f"random_init/{k}": m for k, m in enumerate(twins)}}
        forecasts = {name: {s: forecast_features(m, splits[s], docs[s], block_size,
                                                 prefix_lengths(factors, docs, s), device)
                            for s in splits}
                     for name, m in models.items()}
        results.append(score(forecasts, y, f"forecast:{factor}", "pretext"))
    return results


def probe_tokens(model: Learner, random_model: Learner, train_split, val_split, train_docs,
                 val_docs, block_size: int, masking: MaskingConfig, seed: int, device: str,
                 remembered: BaselineCache | None = None) -> list[ProbeResult]:
    """Token identity from contextual embeddings, and the decoder lens on the predictor; the
    random twin's scores come from ``remembered`` when it holds them (keyed by the twin's
    weights, its objective and the masking)."""
    scores, lens = {}, {}
    twin = (f"random_init@{weights_digest(random_model)}/"
            f"{sorted(asdict(random_model.objective).items())}/{sorted(asdict(masking).items())}")
    for probe, found in (("token_identity", scores), ("decoder_lens", lens)):
        value = remembered.get(probe, twin) if remembered is not None else None
        if value is not None:
            found["random_init"] = value
    for name, m in (("trained", model), ("random_init", random_model)):
        if name in scores:
            continue
        x_train, y_train = recurring(*token_features(m, train_split, train_docs, block_size,
                                                     device))
        x_val, y_val = token_features(m, val_split, val_docs, block_size, device)
        readout = fit_readout(x_train, y_train)
        scores[name] = float((readout.predict(x_val) == y_val).float().mean())
        if m.can_predict:
            lens[name] = decoder_lens_accuracy(m, readout, val_split, val_docs, block_size,
                                               MaskSampler(masking, seed), device)
        if name == "random_init" and remembered is not None:
            remembered.put("token_identity", twin, scores[name])
            if name in lens:
                remembered.put("decoder_lens", twin, lens[name])
    results = [ProbeResult("token_identity", "information", n_train=MAX_PROBE_TOKENS,
                           **scores)]
    if lens:
        results.append(ProbeResult("decoder_lens", "information", **lens))
    return results


def recurring(x: Tensor, y: Tensor, min_count: int = 2) -> tuple[Tensor, Tensor]:
    """The rows of (x, y) whose label occurs at least ``min_count`` times: on real text many
    of the words in a token sample occur once, and each would cost the token readout a
    softmax class of its own (its cost grows with the classes) for few validation tokens."""
    _, inverse, counts = y.unique(return_inverse=True, return_counts=True)
    keep = counts[inverse] >= min_count
    return x[keep], y[keep]


class Readout:
    """A fitted linear readout over the classes its training labels hold: ``logits`` over
    those (``classes``), ``predict`` the class ids themselves."""

    def __init__(self, mean: Tensor, std: Tensor, w: Tensor, b: Tensor, classes: Tensor):
        self.mean, self.std, self.w, self.b, self.classes = mean, std, w, b, classes

    def logits(self, features: Tensor) -> Tensor:
        return ((features.cpu().float() - self.mean) / self.std) @ self.w + self.b

    def predict(self, features: Tensor) -> Tensor:
        return self.classes[self.logits(features).argmax(1)]


def fit_readout(x: Tensor, y: Tensor, weight_decay: float = 1e-4,
                max_iter: int = 100) -> Readout:
    """Multinomial logistic regression (L-BFGS, L2) on standardized features, over the classes
    that occur in ``y``: a class never seen in training cannot be predicted, and leaving it out
    of the softmax makes the token readout over a large vocabulary several times cheaper."""
    classes, targets = y.unique(return_inverse=True)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, targets) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Readout(mean, std, w.detach(), b.detach(), classes)


@torch.no_grad()
def decoder_lens_accuracy(model: Learner, readout, split, documents, block_size: int,
                          sampler: MaskSampler, device: str) -> float:
    """Top-1 accuracy of the token readout on the predictor's outputs at target positions."""
    correct = total = 0
    for batch in _masked_batches(split, documents, block_size, sampler):
        batch = batch.to(device)
        predictions, _ = model.predict(batch)
        valid = batch.target_valid
        truth = batch.tokens[batch.document[:, None], batch.target_positions][valid]
        correct += int((readout.predict(predictions[valid]) == truth.cpu()).sum())
        total += int(valid.sum())
    return correct / max(total, 1)


@torch.no_grad()
def decoder_lens_examples(model: Learner, readout, vocab: data.Vocabulary, split, documents,
                          block_size: int, sampler: MaskSampler, n: int = 3) -> list[dict]:
    """For a few views: the text with its hidden spans, what the predictor reads as, the truth."""
    batch = next(iter(_masked_batches(split, documents[:n], block_size, sampler)))
    predictions, _ = model.predict(batch)
    examples = []
    for v in range(min(n, len(batch.document))):
        valid = batch.target_valid[v]
        positions = batch.target_positions[v][valid]
        doc = batch.tokens[batch.document[v], : batch.lengths[batch.document[v]]]
        guessed = readout.predict(predictions[v][valid])
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


def training_gain(results: list[ProbeResult]) -> float | None:
    """The headline: the mean over the ``in_headline`` probes of what training added to the
    random-init twin, ``trained − random_init``; None when no probe qualifies."""
    added = [r.trained - r.random_init for r in results if r.in_headline]
    return round(float(np.mean(added)), 4) if added else None


def passed(results: list[ProbeResult], noise: float = NOISE) -> list[str]:
    """The document probes whose trained encoder beats the best baseline (random init and
    every shortcut) by ``noise`` or more."""
    return [r.name for r in results if r.baselines and r.margin >= noise]


def headline(results: list[ProbeResult]) -> dict:
    """A report's headline keys: ``training_gain``, the probes it is taken over
    (``headline_probes``) and the probes ``passed``."""
    return {"training_gain": training_gain(results),
            "headline_probes": [r.name for r in results if r.in_headline],
            "passed": passed(results)}


def as_dicts(results: list[ProbeResult]) -> list[dict]:
    """Results as JSON-ready dicts, with their best baseline (and which one it is)."""
    return [{**asdict(r), "best_baseline": r.best_baseline,
             "best_baseline_name": r.best_baseline_name} for r in results]


# --- helpers -------------------------------------------------------------------------------


def pad(ids: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([max(len(x), 1) for x in ids])
    tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.from_numpy(np.asarray(x, dtype=np.int64))
    return tokens, lengths


@torch.no_grad()
def token_features(model: Learner, split, documents, block_size: int, device: str):
    """The regressed targets at every token (``regression_targets``) and the token ids."""
    xs, ys, count = [], [], 0
    for start in range(0, len(documents), 64):
        tokens, lengths = split.batch(documents[start : start + 64], block_size)
        tokens, lengths = tokens.to(device), lengths.to(device)
        h = regression_targets(model, tokens, lengths)
        valid = torch.arange(tokens.shape[1], device=device) < lengths[:, None]
        xs.append(h[valid].cpu())
        ys.append(tokens[valid].cpu())
        count += int(valid.sum())
        if count >= MAX_PROBE_TOKENS:
            break
    return torch.cat(xs)[:MAX_PROBE_TOKENS], torch.cat(ys)[:MAX_PROBE_TOKENS]


@torch.no_grad()
def forecast_features(model: Learner, split, documents, block_size: int, prefix_lengths: np.ndarray,
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


def random_twin(model: Learner, seed: int, device: str = "cpu") -> Learner:
    """A model of the same kind, shape and objective as ``model``, freshly initialized from
    ``seed``."""
    torch.manual_seed(seed)
    return type(model)(model.config, model.objective).to(device).eval()


def _fold(scores: dict[str, float]) -> dict[str, float]:
    """``random_init/k`` scores into their mean (``random_init``) and spread."""
    twins = [v for k, v in scores.items() if k.startswith("random_init/")]
    folded = {k: v for k, v in scores.items() if not k.startswith("random_init/")}
    if twins:
        folded["random_init"] = float(np.mean(twins))
    if len(twins) > 1:
        folded["random_init_std"] = float(np.std(twins))
    return folded


def _majority(y: Tensor) -> float:
    return float(torch.bincount(y).max()) / len(y)
