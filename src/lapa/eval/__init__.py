"""Evaluation: latent-action quality metrics, the Stage 1 report (`lapa eval-laq`)."""
