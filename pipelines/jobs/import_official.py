"""`sing import translator|embeddings`: the official SING release's files -> this project's
(pipelines.models.official reads them without executing code)."""
from __future__ import annotations


def cli_args(p) -> None:
    from pipelines.models.zoo import PAPER_CLIP

    sub = p.add_subparsers(dest="import_cmd", required=True, metavar="WHAT")
    it = sub.add_parser("translator", help="official linear translator (best.pt + metadata.yaml) -> a sing "
                                           "translator file for MODEL")
    it.add_argument("src", metavar="SRC", help="the official best.pt (or its directory translators/<name>/linear)")
    it.add_argument("--model", required=True, help="the classifier it belongs to: a MODEL string or a paper zoo "
                                                    "name (resnet, efficientnet, ...)")
    it.add_argument("--out", required=True, help="translator .safetensors to write (with a .json sidecar)")
    it.add_argument("--metadata", help="the translator's metadata.yaml (default: beside SRC)")
    it.add_argument("--clip", help="CLIP model of the translator's output space (default: from embedding_backend; "
                                   f"the official Karlo backend is {PAPER_CLIP})")
    it.add_argument("--any-name", action="store_true", help="import even when metadata model_name is not the zoo "
                                                            "name of --model")
    ie = sub.add_parser("embeddings", help="official text-embedding .npz -> a text-embedding Parquet for "
                                           "--class-text / --concepts / --prompt-embeddings")
    ie.add_argument("npz", metavar="NPZ", help="the official npz (classes, prompts, embeddings)")
    ie.add_argument("--out", required=True, help="Parquet to write")
    ie.add_argument("--prompt", default="mean", help="which prompt's embeddings: mean (default; what the official "
                                                     "code uses) or prompt1 .. prompt5")
    ie.add_argument("--clip", default=PAPER_CLIP, help=f"CLIP model the embeddings come from (default {PAPER_CLIP})")


def cli_run(a) -> int:
    from pipelines.models.official import import_embeddings, import_translator

    if a.import_cmd == "translator":
        info = import_translator(a.src, a.model, a.out, metadata=a.metadata, clip=a.clip, any_name=a.any_name)
        print(f"wrote translator {info['path']} (id {info['id']}): {info['in_dim']} -> {info['out_dim']}, "
              f"source_model {info['source_model']}, CLIP {info['clip_model']}, from {info['source_file']} "
              f"(sha256 {info['source_sha256'][:12]})")
    else:
        info = import_embeddings(a.npz, a.out, prompt=a.prompt, clip=a.clip)
        print(f"wrote {info['rows']} embeddings ({info['dim']}-d, prompt {info['prompt']!r}, {info['clip_model']}) "
              f"to {info['path']}")
    return 0
