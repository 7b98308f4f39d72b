"""Build a feature store: labels, per-example gradient factors, projection, target — resumable, sharded.

For every checkpoint α in ``FeatureConfig.alphas`` (θ_α = θ0 + α(θf − θ0); α = j/M, j = 1..M)
and every document i, the store row is P ∇_θ L_i(θ_α) over the parameter set, where L_i is the
task loss of ``features/losses.py`` with the document's (pseudo-)label; the store's target is
P(θ0 − θf) over the same parameters, projected by the same seeded projector (see
docs/ARCHITECTURE.md, "The maths of the fast paths"). Pseudo-labels always come from θf, read in
the feature forward of θf's own store where one row scores every choice (``fused.py``). The target
is taken from float32 weights whatever ``dtype`` the models run in.
``params=head_labels`` (classification) stores instead the exact gradient of the loss restricted to
the C label tokens with respect to their C head rows, and θ0 − θf on those rows (``label_head.py``).

Several processes (``torchrun`` / ``accelerate launch``; gloo on CPU, NCCL on GPUs) each take a
contiguous slice of the corpus and write their own shard store; rank 0 merges the shards in rank
order, so the merged store has the corpus order whatever the number of processes.

Memory is bounded by the batch and the store: pending rows are encoded ``STREAM_CHUNK`` documents
at a time (batched by length within a chunk) and written straight into the memory-mapped store;
pseudo-labels stream the same way (``features/pseudo_labels.py``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from lm_eval_approx.errors import ConfigError
from lm_eval_approx.features.config import DEFAULT_MAX_LENGTH, FeatureConfig
from lm_eval_approx.features.encoding import (
    collate,
    encode_classification,
    encode_examples,
)
from lm_eval_approx.features.gradients import head_factors, layer_factors, merge_windows, total_sqnorm
from lm_eval_approx.features.label_head import (
    first_label_encodings,
    label_head_factors,
    label_head_projector,
    label_token_ids,
)
from lm_eval_approx.features.fused import NO_CHOICE, PseudoLabelChoice, carriers, task_has_carriers
from lm_eval_approx.features.losses import STREAM_CHUNK
from lm_eval_approx.features.projection import Projector, make_projector
from lm_eval_approx.features.pseudo_labels import pseudo_label
from lm_eval_approx.features.store import META_FILE, NO_LABEL, FeatureStore
from lm_eval_approx.models.interpolation import interpolated
from lm_eval_approx.models.layers import (
    changed_modules,
    head_name,
    layer_shape,
    linear_modules,
    resolve_modules,
    weight_delta,
)
from lm_eval_approx.models.loading import load_model, load_tokenizer, model_fingerprint
from lm_eval_approx.models.parameter_sets import (
    CHANGED,
    HEAD,
    HEAD_LABELS,
    HEAD_SETS,
)
from lm_eval_approx.tasks.kinds import CLASSIFICATION, LM_TEXT_RULE
from lm_eval_approx.tasks.lm_eval_tasks import get_task_spec

SHARD_DIR = "shards"
ALPHA_DIR = "alpha-{:.4f}"


@contextlib.contextmanager
def distributed():
    """(rank, world size, barrier) of this process; joins the process group torchrun/accelerate set up
    and destroys it on exit if it created it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1, lambda: None
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), dist.barrier
    finally:
        if created:
            dist.destroy_process_group()


def _device(config: FeatureConfig) -> str:
    if config.device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return config.device


@contextlib.contextmanager
def _float32_pair(config: FeatureConfig, model0, model_f):
    """θ0 and θf as the target θ0 − θf and the ``changed`` layers are read from: the loaded models
    when they are float32, else float32 copies on the CPU for the duration (both models once more in
    memory, briefly). A full finetune's update is often below bf16's resolution (2⁻⁸ relative): loaded
    in bf16, θ0 and θf round to the same weights and their difference is lost however it is taken."""
    if config.dtype == "float32":
        yield model0, model_f
        return
    yield load_model(config.base, "float32", "cpu"), load_model(config.finetuned, "float32", "cpu")


def _parameter_set(config: FeatureConfig, model0, model_f) -> list[str]:
    explicit = config.param_names
    if explicit is not None:
        resolve_modules(model0, explicit)
        resolve_modules(model_f, explicit)
        return explicit
    if config.params in HEAD_SETS:
        return [head_name(model_f)]
    names = changed_modules(model0, model_f)
    if not names:
        raise ConfigError("params", CHANGED, "models that differ in at least one linear layer "
                          f"({config.base!r} and {config.finetuned!r} are identical there)")
    return names


def _label_rank(tokenizer, spec, add_bos_token: bool | None) -> int:
    """r: the most label tokens any verbaliser takes after the task template (factors are padded to r)."""
    return max(len(e.ids) - e.start for e in (encode_classification(tokenizer, spec, "", c, DEFAULT_MAX_LENGTH,
                                                                    add_bos_token)
                                              for c in range(spec.num_classes)))


def document_batches(order, windows: list[int], batch_size: int) -> list[np.ndarray]:
    """Consecutive documents of ``order`` in batches of at most ``batch_size`` windows (a document
    with more windows than that is a batch of its own): a document never spans two batches."""
    batches, current, size = [], list[int](), 0
    for j in order:
        if current and size + windows[j] > batch_size:
            batches.append(np.asarray(current))
            current, size = [], 0
        current.append(j)
        size += windows[j]
    if current:
        batches.append(np.asarray(current))
    return batches


def store_paths(out_dir, alphas: list[float]) -> list[Path]:
    """Where the store of each α lives: ``out_dir`` itself for one α, else ``out_dir/alpha-X``."""
    out = Path(out_dir)
    return [out] if len(alphas) == 1 else [out / ALPHA_DIR.format(a) for a in alphas]


def open_feature_stores(out_dir, expect: dict | None = None) -> list[FeatureStore]:
    """Every store under ``out_dir`` (itself, or its alpha-* folders), ordered by α."""
    out = Path(out_dir)
    paths = [out] if (out / META_FILE).is_file() else sorted(p for p in out.glob("alpha-*") if (p / META_FILE).is_file())
    if not paths:
        raise ConfigError("features", str(out), "a folder written by `lm-eval-approx features`")
    return sorted((FeatureStore.open(p, expect) for p in paths), key=lambda s: s.alpha)


class _Extractor:
    """Everything fixed for one run: models, parameter set, projector, target."""

    def __init__(self, config: FeatureConfig):
        self.config, self.spec = config, get_task_spec(config.task)
        device = _device(config)
        self.model0 = load_model(config.base, config.dtype, device)
        self.model_f = load_model(config.finetuned, config.dtype, device)
        self.tokenizer = load_tokenizer(config.base)
        self.label_ids = label_token_ids(self.tokenizer, self.spec) if config.params == HEAD_LABELS else None
        with _float32_pair(config, self.model0, self.model_f) as (ref0, ref_f):
            self.names = _parameter_set(config, ref0, ref_f)
            mods0, mods_f = linear_modules(ref0), linear_modules(ref_f)
            self.projector: Projector
            if self.label_ids is not None:
                head = self.names[0]
                self.projector, target = label_head_projector(mods0[head], mods_f[head], head, self.label_ids,
                                                              device, (config.base, config.finetuned))
            else:
                shapes = {n: layer_shape(mods_f[n]) for n in self.names}
                self.projector = make_projector(config.projection, shapes, config.dim, config.seed, device)
                target = self.projector.project_delta({n: weight_delta(mods0[n], mods_f[n]) for n in self.names})
        self.target = target.cpu().numpy()
        # θf's pseudo-labels can come from the feature forward at θf itself (``fused.py``)
        self.fusable = self.label_ids is None and task_has_carriers(self.tokenizer, self.spec, config.add_bos_token)
        self.is_head = config.params == HEAD
        self.exact_sqnorm = config.sqnorm == "exact" or (
            config.sqnorm == "auto" and (self.is_head or self.label_ids is not None))
        low_rank = (self.is_head and self.spec.kind == CLASSIFICATION and config.projection == "kronecker")
        self.factor_shape = None
        if low_rank:
            d1, d2 = self.projector.blocks[self.names[0]]  # type: ignore[attr-defined]  # a KroneckerProjector here
            self.factor_shape = (_label_rank(self.tokenizer, self.spec, config.add_bos_token), d1, d2)
        self.meta = {"base": model_fingerprint(config.base), "finetuned": model_fingerprint(config.finetuned),
                     "task": config.task, "params": self.names, "params_spec": config.params,
                     "projection": config.projection, "requested_dim": config.dim, "seed": config.seed,
                     "labels_source": config.labels, "max_length": config.max_length,
                     "sqnorm": "exact" if self.exact_sqnorm else "projected",
                     "corpus": config.corpus, "corpus_limit": config.corpus_limit, "corpus_seed": config.corpus_seed}
        if self.label_ids is not None:
            self.meta.update(projection=self.projector.kind, label_token_ids=self.label_ids)
        if self.spec.kind != CLASSIFICATION:
            self.meta["lm_text"] = LM_TEXT_RULE
        if config.add_bos_token is not None:  # unset: the meta stores always had
            self.meta["add_bos_token"] = config.add_bos_token

    def labels_for(self, texts, count: int, given) -> np.ndarray:
        """The label of each of ``count`` texts (any iterable): given, θf's pseudo-label, or NO_LABEL."""
        if self.spec.kind != CLASSIFICATION:
            return np.full(count, NO_LABEL, dtype=np.int64)
        if given is not None:
            return np.asarray(given, dtype=np.int64)
        return pseudo_label(self.model_f, self.tokenizer, self.spec, texts, self.config.batch_size,
                            self.config.max_length, add_bos_token=self.config.add_bos_token).labels

    def fill(self, store: FeatureStore, texts: list[str], labels: np.ndarray, rows: np.ndarray, progress,
             fused: bool = False) -> None:
        """Compute and write the given rows of ``store`` (texts/labels indexed like the store), encoding
        ``STREAM_CHUNK`` rows at a time so memory does not grow with the number of rows. ``fused`` (the
        model is θf, rows without a label yet): each row's pseudo-label is read in its feature forward
        and written into ``labels`` (``fused.py``)."""
        for lo in range(0, len(rows), STREAM_CHUNK):
            self._fill_chunk(store, texts, labels, rows[lo : lo + STREAM_CHUNK], progress, fused)

    def _documents(self, texts: list[str], labels: np.ndarray, fused: bool) -> tuple[list, list | None]:
        """Each text's encodings under its label, and with ``fused`` its carrier (None where it has
        none: that text is pseudo-labelled by its own pass first, as without fusion)."""
        cfg = self.config
        if not fused:
            return encode_examples(self.tokenizer, self.spec, texts, labels if self.spec.kind == CLASSIFICATION
                                   else None, cfg.max_length, cfg.add_bos_token), None
        choices = carriers(self.tokenizer, self.spec, texts, cfg.max_length, cfg.add_bos_token)
        loose = [j for j, c in enumerate(choices) if c is None]
        if loose:
            labels[loose] = self.labels_for([texts[j] for j in loose], len(loose), None)
        own = encode_examples(self.tokenizer, self.spec, [texts[j] for j in loose], labels[loose], cfg.max_length,
                              cfg.add_bos_token)
        documents = [[c.encoding] if c is not None else None for c in choices]
        for j, windows in zip(loose, own):
            documents[j] = windows
        return documents, choices

    def _fill_chunk(self, store: FeatureStore, texts: list[str], labels: np.ndarray, rows: np.ndarray,
                    progress, fused: bool) -> None:
        """``fill`` for one chunk of rows, in batches sorted by length; a document's rolling windows
        (language modelling) share a batch and merge into its one row."""
        cfg = self.config
        chunk_labels = labels[rows]
        documents, choices = self._documents([texts[i] for i in rows], chunk_labels, fused)
        if self.label_ids is not None:
            documents = [first_label_encodings(windows) for windows in documents]
        order = np.argsort([sum(len(e.ids) for e in windows) for windows in documents], kind="stable")
        device = self.projector.device
        for part in document_batches(order, [len(windows) for windows in documents], cfg.batch_size):
            counts = [len(documents[j]) for j in part]
            batch = collate([e for j in part for e in documents[j]], self.tokenizer.pad_token_id, device)
            choose = None if choices is None else PseudoLabelChoice([choices[j] for j in part], device)
            if self.label_ids is not None:
                loss, factors = label_head_factors(self.model_f, batch, self.names[0], self.label_ids,
                                                   chunk_labels[part])
            elif self.is_head:
                loss, factors = head_factors(self.model_f, batch, self.names[0], choose=choose)
            else:
                loss, factors = layer_factors(self.model_f, batch, self.names, choose=choose)
            if choose is not None:
                chunk_labels[part] = np.where(choose.labels != NO_CHOICE, choose.labels, chunk_labels[part])
                labels[rows[part]] = chunk_labels[part]
            loss, factors = merge_windows(loss, factors, counts)
            projected = self.projector.project(factors)
            sqnorm = (total_sqnorm(factors) if self.exact_sqnorm else projected.pow(2).sum(dim=1)).cpu().numpy()
            feats = projected.cpu().numpy()
            low = None
            if store.factors is not None:
                a, b = self.projector.low_rank(factors)  # type: ignore[misc]  # factors only from a low-rank projector
                r = store.factors[0].shape[1]
                if a.shape[1] > r:
                    raise ConfigError("task", cfg.task, f"verbalisers of at most {r} tokens (found {a.shape[1]})")
                low = tuple(np.pad(t.cpu().numpy(), ((0, 0), (0, r - t.shape[1]), (0, 0))) for t in (a, b))
            store.write_rows(rows[part], feats, loss.cpu().numpy(), chunk_labels[part], sqnorm, low)  # type: ignore[arg-type]  # low: (A, B)
            progress.update(len(part))


def build_feature_stores(config: FeatureConfig, corpus, labels, out_dir, fused: bool = True) -> list[FeatureStore]:
    """Build (or resume) one store per checkpoint α under ``out_dir``; returns them ordered by α.

    ``corpus`` has ``ids`` and ``texts`` (a ``corpus.Corpus``); ``labels`` are per-document labels
    to use as they are, or None to take them from ``config.labels`` (pseudo: θf's argmax; true: the
    corpus's own labels). Pseudo-labels of documents θf's own store (α = 1) still lacks are read in
    its feature forward where the task allows (``fused.py``), so θf runs once over them; ``fused=False``
    runs the two passes (pseudo-labels first), the slow twin the tests hold the fused path to.
    """
    from tqdm.auto import tqdm

    ids, texts = list(corpus.ids), list(corpus.texts)
    if labels is None and config.labels == "true" and get_task_spec(config.task).kind == CLASSIFICATION:
        labels = getattr(corpus, "labels", None)
        if labels is None or any(x is None for x in labels):
            raise ConfigError("labels", "true", "a corpus with a label for every document (or labels=pseudo)")
    if labels is not None and len(labels) != len(ids):
        raise ConfigError("labels", f"{len(labels)} labels", f"{len(ids)} (one per document)")
    finals = store_paths(out_dir, config.alphas)
    with distributed() as (rank, world, barrier):
        extractor = _Extractor(config)
        lo, hi = rank * len(ids) // world, (rank + 1) * len(ids) // world
        mine = slice(lo, hi)
        stores = []
        for alpha, final in zip(config.alphas, finals):
            path = final if world == 1 else final / SHARD_DIR / f"rank{rank}-of-{world}"
            store = FeatureStore.open_or_create(path, dict(extractor.meta, alpha=alpha), ids[mine],
                                                extractor.projector.dim, extractor.factor_shape)
            if store.target is None:
                store.set_target(extractor.target)
            stores.append(store)
        pending = np.unique(np.concatenate([s.pending() for s in stores]))
        my_labels = np.full(hi - lo, NO_LABEL, dtype=np.int64)
        done_rows = np.flatnonzero(stores[-1].done)
        my_labels[done_rows] = stores[-1].labels[done_rows]
        fuse = fused and labels is None and extractor.fusable and config.alphas[-1] == 1.0
        order = list(zip(config.alphas, stores))
        if fuse:  # θf's store first: its forward labels its pending rows, which every other α then reads
            order = order[-1:] + order[:-1]
        elif len(pending):
            given = None if labels is None else np.asarray(labels, dtype=np.int64)[lo + pending]
            my_labels[pending] = extractor.labels_for((texts[lo + r] for r in pending), len(pending), given)
        total = sum(len(s.pending()) for s in stores)
        with tqdm(total=total, unit="ex", disable=rank != 0 or not total, desc="features") as progress:
            for alpha, store in order:
                with interpolated(extractor.model0, extractor.model_f, alpha):
                    extractor.fill(store, texts[mine], my_labels, store.pending(), progress, fuse and alpha == 1.0)
        if world > 1:
            barrier()
            if rank == 0:
                for alpha, final in zip(config.alphas, finals):
                    shards = [FeatureStore.open(final / SHARD_DIR / f"rank{r}-of-{world}") for r in range(world)]
                    FeatureStore.merge(shards, final, dict(extractor.meta, alpha=alpha))
            barrier()
    return [FeatureStore.open(path) for path in finals]


def build_feature_store(config: FeatureConfig, corpus, labels, out_dir, fused: bool = True) -> FeatureStore:
    """Build (or resume) the stores of ``config`` and return the one at θf (the largest α)."""
    return build_feature_stores(config, corpus, labels, out_dir, fused)[-1]
