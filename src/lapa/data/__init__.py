"""Data: shard formats (one module each), ingest (videos -> shards), tar reading, batching, loaders that
need no Lightning (`loader`), a thin Lightning DataModule (`datamodule`), transforms."""
