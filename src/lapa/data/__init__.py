"""Data: shard formats, images, ingest (videos -> shards), transforms and streaming data modules."""
