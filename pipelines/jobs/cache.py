"""`sing cache ls|prune`: the per-node download cache of URL inputs (pipelines.io.remote)."""
from __future__ import annotations

import time


def cli_args(p) -> None:
    sub = p.add_subparsers(dest="cache_cmd", required=True, metavar="WHAT")
    sub.add_parser("ls", help="entries, least recently used first")
    pr = sub.add_parser("prune", help="remove entries unused for a while / beyond a size (run between jobs)")
    pr.add_argument("--max-gb", type=float, help="keep at most this many GB, least recently used go first")
    pr.add_argument("--older-than-days", type=float, help="remove entries unused for this many days")
    pr.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    for c in (p, *sub.choices.values()):
        c.add_argument("--cache-dir", help="default: $SING_CACHE or ~/.cache/sing/remote")


def cli_run(a) -> int:
    from pipelines.io.remote import cache_entries, default_cache_dir, prune_cache

    root = a.cache_dir or str(default_cache_dir())
    if a.cache_cmd == "ls":
        entries = cache_entries(root)
        for e in entries:
            print(f"{e['bytes'] / 2**20:10.1f} MiB  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}  "
                  f"{e['path'].name}  {', '.join(e['files'])}")
        print(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 2**30:.2f} GiB in {root}")
        return 0
    removed = prune_cache(root, max_bytes=None if a.max_gb is None else int(a.max_gb * 2**30),
                          older_than_s=None if a.older_than_days is None else a.older_than_days * 86400,
                          dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e['path'].name} ({e['bytes'] / 2**20:.1f} MiB: {', '.join(e['files'])})")
    print(f"{verb} {len(removed)} entries, {sum(e['bytes'] for e in removed) / 2**30:.2f} GiB from {root}")
    return 0
