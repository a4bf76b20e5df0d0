"""`ServeConfig`: the settings of `lapa serve` (conf/serve.yaml), checked when the config is built."""

from __future__ import annotations

from dataclasses import dataclass

from lapa.config import require
from lapa.serve.decode import Limits

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass
class ServeConfig:
    """Settings of `lapa serve` (conf/serve.yaml)."""

    policy: str = ""  # an export directory (lapa finetune's export) or a registered policy name
    host: str = "127.0.0.1"  # 0.0.0.0 to accept other machines (there is no authentication)
    port: int = 8000
    max_batch: int = 8  # requests that share one forward pass at most
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others (0: take what is queued)
    max_queue: int = 1024  # requests waiting at most; more get 503 (retry later)
    max_body_mb: float = 32.0  # larger request bodies get 413
    max_image_side: int = 4096  # pixels; larger images get 413 (checked before decoding)
    max_instruction_chars: int = 2000
    device: str = "auto"  # auto | cpu | cuda | cuda:N (passed to the policy's loader)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (passed to the policy's loader)
    warmup: bool = True  # one batch through the policy before accepting requests (fails fast, no slow first call)
    log_level: str = "info"  # uvicorn's: critical | error | warning | info | debug

    def __post_init__(self) -> None:
        require(bool(self.policy), "policy", self.policy, "set policy=DIR (a lapa finetune export)")
        require(bool(self.host), "host", self.host, "set host=127.0.0.1 (this machine) or 0.0.0.0 (any)")
        require(0 <= self.port <= 65535, "port", self.port, "must be in 0..65535 (0: any free port)")
        require(self.max_batch >= 1, "max_batch", self.max_batch, "must be >= 1")
        require(0 <= self.max_wait_ms <= 1000, "max_wait_ms", self.max_wait_ms, "must be in 0..1000")
        require(self.max_queue >= 1, "max_queue", self.max_queue, "must be >= 1")
        require(self.max_body_mb > 0, "max_body_mb", self.max_body_mb, "must be > 0")
        require(self.max_image_side >= 1, "max_image_side", self.max_image_side, "must be >= 1")
        require(self.max_instruction_chars >= 1, "max_instruction_chars", self.max_instruction_chars, "must be >= 1")
        require(self.device in ("auto", "cpu", "cuda", "mps") or (self.device.startswith("cuda:")
                                                                and self.device[5:].isdigit()),
                "device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        require(self.log_level in LOG_LEVELS, "log_level", self.log_level, f"must be one of {', '.join(LOG_LEVELS)}")

    def limits(self) -> Limits:
        return Limits(max_body_bytes=int(self.max_body_mb * 2**20), max_image_side=self.max_image_side,
                      max_instruction_chars=self.max_instruction_chars)
