"""Everything that moves data: model loading, image decoding, shards, Ray jobs, CLI."""
