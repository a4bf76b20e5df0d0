"""lapa: Latent Action Pretraining from videos.

Stages: `lapa ingest` (videos -> frame-pair shards), `lapa train-laq` (Stage 1 latent action quantiser),
`lapa label` (latent-labelled shards), and the built-in simulated robot world `lapa sim`.
"""

__version__ = "0.1.0"
