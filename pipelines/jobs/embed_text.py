"""`sing embed-text`: CLIP text embeddings of class prompts or a concept vocabulary, cached as
a text-embedding Parquet (for --class-text / --concepts)."""
from __future__ import annotations

from pipelines.errors import BadInput


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    p.add_argument("--clip", required=True, help="CLIP model (openclip:ARCH@TAG; the file records its identity, "
                                                 "activation included)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="text file, one class name / concept per line")
    src.add_argument("--classes", choices=["imagenet"], help="the 1000 ImageNet class names")
    p.add_argument("--templates", default="single", help="single | ensemble (class prompts) | concept")
    p.add_argument("--raw", action="store_true", help="embed each line as is, no template")
    p.add_argument("--out", required=True, help="Parquet to write")
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.text import CONCEPT_TEMPLATES, embed_texts, read_lines, save_embeddings

    if a.classes:
        from pipelines.models.imagenet_classes import imagenet_class_names

        names = list(imagenet_class_names())
    else:
        names = read_lines(a.prompts)
    if a.raw:
        templates = ["{}"]
    elif a.templates == "concept":
        templates = CONCEPT_TEMPLATES
    elif a.templates in TEMPLATES:
        templates = TEMPLATES[a.templates]
    else:
        raise BadInput(f"unknown templates {a.templates!r}; choose from {sorted(TEMPLATES) + ['concept']}")
    clip = load_clip(a.clip)
    path = save_embeddings(a.out, names, embed_texts(clip, names, templates), clip.identity, templates)
    print(f"wrote {len(names)} embeddings ({clip.embed_dim}-d, {clip.model_id}, {clip.identity['activation']}, "
          f"{clip.identity['id']}) to {path}")
    return 0
