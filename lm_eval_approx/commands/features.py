"""``lm-eval-approx features``: build (or resume) the gradient feature store of a corpus.

Run it under ``torchrun --nproc_per_node N`` (CPU) or ``accelerate launch`` (GPUs) to shard the
corpus over processes; rank 0 merges the shards.
"""

from __future__ import annotations

from lm_eval_approx.features.build import FeatureConfig


def run_features(args) -> int:
    from lm_eval_approx.models.pairs import check_model_pair
    from lm_eval_approx.data.corpus import load_corpus
    from lm_eval_approx.features.build import build_feature_stores
    from lm_eval_approx.tasks.specs import CLASSIFICATION, get_task_spec
    from lm_eval_approx.training.examples import check_labels

    config = FeatureConfig(
        base=args.base, finetuned=args.finetuned, task=args.task, params=args.params, dim=args.dim,
        projection=args.projection, seed=args.seed, checkpoints=args.checkpoints, labels=args.labels,
        batch_size=args.batch_size, max_length=args.max_length, sqnorm=args.sqnorm, dtype=args.dtype,
        device=args.device, corpus=args.corpus, corpus_limit=args.limit, corpus_seed=args.corpus_seed,
    )
    check_model_pair(args.base, args.finetuned, args.params)
    corpus = load_corpus(args.corpus, limit=args.limit, seed=args.corpus_seed)
    spec = get_task_spec(args.task)
    if args.labels == "true" and spec.kind == CLASSIFICATION:
        check_labels("corpus", corpus.labels, corpus.ids, spec)
    stores = build_feature_stores(config, corpus, None, args.out)
    for store in stores:
        print(f"alpha={store.alpha:g}: {len(store)} examples × d={store.dim} in {store.path}")
    return 0


def add_parser(subparsers) -> None:
    defaults = FeatureConfig(base="-", finetuned="-")
    help_text = "per-example gradient features of a corpus, projected, in a resumable store"
    parser = subparsers.add_parser("features", help=help_text, description=help_text)
    parser.add_argument("--base", required=True, help="θ0: model folder, hub id, .gguf or alias")
    parser.add_argument("--finetuned", required=True, help="θf: full model or PEFT adapter folder")
    parser.add_argument("--task", required=True, help="approximation task, e.g. approx_agnews")
    parser.add_argument("--corpus", required=True, help="corpus spec, e.g. seed:wikitext2+seed:dbpedia")
    parser.add_argument("--params", default=defaults.params,
                        help="head (default), head_labels (classification: exact gradient of the label-token softmax on the "
                             "head's label rows), changed, or comma-separated linear-layer names")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="projected dimension (default 4096)")
    parser.add_argument("--out", required=True, help="output folder of the feature store")
    parser.add_argument("--checkpoints", type=int, default=defaults.checkpoints,
                        help="M synthetic checkpoints α = j/M (default 1: θf only)")
    parser.add_argument("--labels", choices=("pseudo", "true"), default=defaults.labels,
                        help="pseudo-labels from θf (default) or the corpus's true labels")
    parser.add_argument("--limit", type=int, default=None, help="draw this many corpus documents")
    parser.add_argument("--corpus-seed", type=int, default=0, help="seed of the --limit draw")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--projection", choices=("kronecker", "dense", "identity"), default=defaults.projection)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="projection seed")
    parser.add_argument("--sqnorm", choices=("auto", "exact", "projected"), default=defaults.sqnorm,
                        help="‖g‖² column: exact, projected ‖Pg‖², or auto (exact for head only)")
    parser.add_argument("--dtype", default=defaults.dtype, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--device", default=defaults.device, help="cpu (default) or cuda")
    parser.set_defaults(func=run_features)
