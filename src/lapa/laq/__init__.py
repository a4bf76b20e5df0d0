"""Stage 1: the latent action quantiser (LAQ).

Public API (docs/contracts.md, "LAQ model"):
    LAQConfig, LAQ, LAQOutput        the model and its config (`lapa.laq.model`)
    load_model(path), save_model(model, path)   checkpoints (`lapa.laq.checkpoint`)
"""

from lapa.laq.checkpoint import load_model, save_model
from lapa.laq.model import LAQ, LAQConfig, LAQDecoder, LAQEncoder, LAQOutput, build_model
from lapa.laq.nsvq import NSVQ

__all__ = ["LAQ", "LAQConfig", "LAQDecoder", "LAQEncoder", "LAQOutput", "NSVQ", "build_model",
           "load_model", "save_model"]
