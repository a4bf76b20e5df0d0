"""Evaluation, above what it measures: latent-action quality (`lapa eval-laq`: `laq_eval`, `metrics`,
`report`) and closed-loop policy evaluation in the simulator (`lapa sim eval`: `closed_loop`)."""
