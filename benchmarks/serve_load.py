"""A bounded load test of `lapa serve` on 127.0.0.1 (issue 13): requests/s and p50/p99 latency at concurrency
1, 8 and 32, then a phase at concurrency 32 with 1,000 malformed requests mixed in among valid ones.

Targets (each printed next to its figure; the exit status is 1 when one is missed):
    - zero 5xx over every request of every phase;
    - the server alive at the end (GET /health answers "ok");
    - every valid answer equal to the in-process `predict_action` of the same policy, loaded in this
      process, to within 1e-5 (each (image, instruction) pair's reference is computed once, here);
    - requests/s at concurrency 32 >= 2x that at concurrency 1 (batching works).

The clean phases send valid requests only, so their ratio measures batching and nothing else; they run
`--rounds` times, interleaved (1, 8, 32, 1, 8, 32, ...), and the table shows each level's best round
(the one least disturbed by whatever else runs on the machine; every round's rate is printed, and every
round's answers are checked). The mixed phase reports its valid requests' rate and latency
while 1,000 bad requests (15 kinds: not JSON, wrong content type, bad base64, truncated PNG, floats,
wrong shape, empty or missing instruction, oversized body, image too large, ...) hit the same server.

    python benchmarks/serve_load.py --make-tiny                  # builds a tiny debug VLA export, serves it
    python benchmarks/serve_load.py --policy runs/finetune/export --device cuda
    python benchmarks/serve_load.py --policy DIR --url http://127.0.0.1:8000   # a server already running

The client (httpx, asyncio, one process) shares the machine with the server: on a few CPU cores it takes
a good part of them, so the figures are a floor for the server alone. Requests send base64 PNG frames
(distinct images and instructions, `--side` pixels) as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INSTRUCTIONS = ["pick up the red cube", "push the blue cylinder to the left of the green cube",
                "put the yellow sphere on the green cube", "lift it"]
BODY_LIMIT_MB = 1.0  # the server this script starts refuses larger bodies; the oversized kind sends more


def make_tiny(directory: Path) -> Path:
    """A Stage 3 export of the debug VLA at random init (64 px towers, LM 128 wide x 2 layers), with an
    action tokenizer fitted on random actions: nothing trained; it exercises the whole serving path."""
    import torch

    from lapa.vla import VLA, load_vla_config
    from lapa.vla.action_tokenizer import ActionTokenizer
    from lapa.vla.finetune_model import swap_head

    torch.manual_seed(0)
    model = swap_head(VLA(load_vla_config("vla_debug")), chunk=1)
    with torch.no_grad():  # large head weights: different frames and prompts give different bins
        model.head.proj.weight.normal_(0.0, 0.5)
    rng = np.random.default_rng(0)
    actions = rng.normal(0, 0.02, (200, 7)).astype(np.float32)
    actions[:, 6] = rng.choice([-1.0, 1.0], 200)
    export = model.save_pretrained(directory, info={"training": {"command": "serve_load --make-tiny", "steps": 0,
                                                                  "data": {"image_size": 64}}})
    ActionTokenizer.fit(actions).save(export)
    return export


def frames(n: int, side: int) -> list[bytes]:
    """n distinct smooth frames (a colour gradient and a square at a different place each) as PNG bytes."""
    from PIL import Image

    out = []
    ys, xs = np.mgrid[0:side, 0:side]
    for i in range(n):
        image = np.stack([xs * 255 // side, ys * 255 // side, np.full_like(xs, 40 * i % 256)], -1).astype(np.uint8)
        y, x = (17 * i) % (side // 2), (29 * i) % (side // 2)
        image[y:y + side // 4, x:x + side // 4] = (255 - 20 * i % 256, 30, 200)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def malformed_requests(good_png: bytes, max_body: int) -> list[dict]:
    """One request of each malformed kind (httpx keyword arguments)."""
    png_b64 = base64.b64encode(good_png).decode()
    tall = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((4200, 4, 3), np.uint8)).save(tall, format="PNG")
    kinds = [
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b"", "headers": {"content-type": "application/json"}},
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        {"json": {"image": "%%% not base64 %%%", "instruction": "x"}},
        {"json": {"image": png_b64[: len(png_b64) // 3 // 4 * 4], "instruction": "x"}},  # a truncated PNG
        {"json": {"image": [[[0.5, 0.5, 0.5]]], "instruction": "x"}},  # floats
        {"json": {"image": [[1, 2], [3, 4]], "instruction": "x"}},  # wrong shape
        {"json": {"image": [[[0, 300, 1]]], "instruction": "x"}},  # out of range
        {"json": {"image": png_b64, "instruction": ""}},
        {"json": {"image": png_b64}},
        {"json": {"instruction": "x"}},
        {"json": {"image": png_b64, "instruction": "x", "extra": 1}},
        {"json": {"image": base64.b64encode(tall.getvalue()).decode(), "instruction": "x"}},  # 4200 px: too large
        {"files": {"image": ("a.png", b"not a png", "image/png")}, "data": {"instruction": "x"}},
    ]
    if max_body <= 8 * 2**20:  # a body over the limit (skipped against a server that accepts huge bodies)
        kinds.append({"content": b"x" * (max_body + 1), "headers": {"content-type": "application/json"}})
    return kinds


@dataclass
class Phase:
    name: str
    concurrency: int
    valid: int = 0
    malformed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # valid requests only, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    wrong: int = 0  # valid answers that differ from predict_action
    bad_4xx: int = 0  # malformed requests answered with a 4xx
    errors: int = 0  # transport errors (connection refused or reset, timeouts)
    batches: tuple[int, int] = (0, 0)  # (requests, batches) the server served in the phase
    client_cpu: float = 0.0  # CPU seconds this process (the client) used in the phase
    server_cpu: float = float("nan")  # CPU seconds the server process used (NaN for --url)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def rps(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def fivexx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def fourxx(self) -> int:
        return sum(n for s, n in self.statuses.items() if 400 <= s < 500)


def render(url: str, **kwargs) -> bytes:
    """One POST /act as the bytes on the wire (httpx builds the headers and bodies, multipart included)."""
    import httpx

    request = httpx.Request("POST", f"{url}/act", **kwargs)
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    return f"POST /act HTTP/1.1\r\n{head}\r\n".encode() + request.read()


class Connection:
    """A bare keep-alive HTTP/1.1 connection: send prepared bytes, read status and body. The load test's
    client must cost little CPU, since it shares the machine with the server (httpx costs ~3x more)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            await self.writer.drain()
        except ConnectionError:  # the server answered early (413) and closed: its answer may still be there
            pass
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass
            self.writer = None


def server_cpu_seconds(pid: int | None) -> float:
    """user + system CPU time of a process so far (Linux /proc), NaN when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return float("nan")


async def run_phase(url: str, phase: Phase, jobs: list, references: np.ndarray, tolerance: float,
                    server_pid: int | None) -> None:
    """Send `jobs` (("valid", pair index, raw bytes) or ("bad", raw bytes)) with `phase.concurrency` in flight."""
    import httpx

    host, port = url.removeprefix("http://").split(":")
    queue = list(reversed(jobs))
    before = httpx.get(f"{url}/health", timeout=30).json()

    async def worker() -> None:
        conn = Connection(host, int(port))
        while queue:
            job = queue.pop()
            t0 = time.perf_counter()
            try:
                status, body = await conn.request(job[-1])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                phase.errors += 1
                await conn.close()
                continue
            phase.count(status)
            if job[0] == "valid":
                phase.valid += 1
                phase.latencies.append(time.perf_counter() - t0)
                ok = status == 200 and np.allclose(json.loads(body)["action"], references[job[1]], rtol=0,
                                                   atol=tolerance)
                phase.wrong += not ok
            else:
                phase.malformed += 1
                phase.bad_4xx += 400 <= status < 500
        await conn.close()

    cpu0, server0, t0 = time.process_time(), server_cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(phase.concurrency)))
    phase.seconds = time.perf_counter() - t0
    phase.client_cpu = time.process_time() - cpu0
    phase.server_cpu = server_cpu_seconds(server_pid) - server0
    after = httpx.get(f"{url}/health", timeout=30).json()
    phase.batches = (after["requests"] - before["requests"], after["batches"] - before["batches"])


def start_server(policy: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lapa.cli", "serve", f"policy={policy}", f"port={port}",
               f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}", f"max_body_mb={BODY_LIMIT_MB}",
               f"device={args.device}", f"dtype={args.dtype}", "log_level=warning"]
    log = open(Path(tempfile.gettempdir()) / f"serve_load_{port}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + args.start_timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"lapa serve exited with status {proc.returncode}; its log: {log.name}")
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"lapa serve did not answer /health within {args.start_timeout} s; its log: {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.25)


def table(phases: list[Phase]) -> str:
    lines = [f"{'phase':<26} {'valid':>6} {'bad':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
             f"{'4xx':>5} {'5xx':>4} {'wrong':>5} {'CPU s: server':>13} {'client':>6}", "-" * 116]
    for p in phases:
        requests, batches = p.batches
        lines.append(f"{p.name:<26} {p.valid:>6} {p.malformed:>5} {p.rps:>8.1f} {p.pct(50):>8.1f} {p.pct(99):>8.1f} "
                     f"{requests / batches if batches else 0:>6.2f} {p.fourxx:>5} {p.fivexx:>4} {p.wrong:>5} "
                     f"{p.server_cpu:>13.2f} {p.client_cpu:>6.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", help="an export directory (lapa finetune's export)")
    source.add_argument("--make-tiny", action="store_true", help="build a tiny debug VLA export and serve it")
    parser.add_argument("--url", help="test a server already running there (serving --policy) instead of starting one")
    parser.add_argument("--requests", type=int, default=256, help="valid requests per clean phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the clean phases (interleaved; best kept)")
    parser.add_argument("--malformed", type=int, default=1000, help="malformed requests in the mixed phase")
    parser.add_argument("--mixed-valid", type=int, default=256, help="valid requests in the mixed phase")
    parser.add_argument("--concurrency", default="1,8,32", help="the clean phases' concurrencies")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--side", type=int, default=96, help="frame side in pixels")
    parser.add_argument("--pairs", type=int, default=32, help="distinct (image, instruction) pairs")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.url and args.make_tiny:
        parser.error("--url needs --policy (the policy that server serves), not --make-tiny")
    levels = [int(c) for c in args.concurrency.split(",")]

    from lapa.policy import get_policy

    tmp = tempfile.TemporaryDirectory(prefix="serve_load_")
    policy_dir = str(make_tiny(Path(tmp.name) / "export")) if args.make_tiny else args.policy
    policy = get_policy(policy_dir, device=args.device, dtype=args.dtype)
    described = policy.info() if callable(getattr(policy, "info", None)) else {}
    model = getattr(policy, "model", None)
    parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    pngs = frames(args.pairs, args.side)
    pairs = [(pngs[i], INSTRUCTIONS[i % len(INSTRUCTIONS)]) for i in range(args.pairs)]
    from PIL import Image

    references = np.stack([policy.predict_action(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), text)
                           for png, text in pairs])
    bodies = [json.dumps({"image": base64.b64encode(png).decode(), "instruction": text}).encode()
              for png, text in pairs]

    proc, url = (None, args.url) if args.url else start_server(policy_dir, args)
    import httpx

    max_body = httpx.get(f"{url}/info", timeout=10).json()["serve"]["max_body_bytes"]
    raws = [render(url, content=body, headers={"content-type": "application/json"}) for body in bodies]
    bad_kinds = [render(url, **kwargs) for kwargs in malformed_requests(pngs[0], max_body)]
    pid = proc.pid if proc is not None else None
    phases: list[Phase] = []
    try:
        warm = Phase("warm-up", 8)
        asyncio.run(run_phase(url, warm, [("valid", i % args.pairs, raws[i % args.pairs]) for i in range(64)],
                              references, args.tolerance, pid))
        phases_all = [warm]
        rounds: dict[int, list[Phase]] = {c: [] for c in levels}
        for _ in range(args.rounds):  # interleaved, so a busy spell of the machine hits every level alike
            for c in levels:
                phase = Phase(f"concurrency {c}", c)
                jobs = [("valid", i % args.pairs, raws[i % args.pairs]) for i in range(args.requests)]
                asyncio.run(run_phase(url, phase, jobs, references, args.tolerance, pid))
                rounds[c].append(phase)
                phases_all.append(phase)
        phases += [max(rounds[c], key=lambda p: p.rps) for c in levels]  # each level's least disturbed round
        mixed = Phase(f"concurrency {levels[-1]} + malformed", levels[-1])
        jobs, every = [], max(1, (args.malformed + args.mixed_valid) // max(1, args.mixed_valid))
        valid_i = bad_i = 0
        while valid_i < args.mixed_valid or bad_i < args.malformed:  # valid ones spread evenly among the bad
            if valid_i < args.mixed_valid and (len(jobs) % every == 0 or bad_i >= args.malformed):
                jobs.append(("valid", valid_i % args.pairs, raws[valid_i % args.pairs]))
                valid_i += 1
            else:
                jobs.append(("bad", bad_kinds[bad_i % len(bad_kinds)]))
                bad_i += 1
        asyncio.run(run_phase(url, mixed, jobs, references, args.tolerance, pid))
        phases.append(mixed)
        phases_all.append(mixed)
        try:
            health = httpx.get(f"{url}/health", timeout=10)
            alive = health.status_code == 200 and health.json()["status"] == "ok"
        except httpx.TransportError:
            alive = False
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"policy: {policy_dir} ({type(policy).__name__}, "
          f"{parameters / 1e6 if parameters else float('nan'):.2f} M parameters, "
          f"device {described.get('device', args.device)}, {described.get('dtype', args.dtype)}); "
          f"max_batch={args.max_batch} max_wait_ms={args.max_wait_ms}; frames {args.side} px PNG; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    print(table(phases))
    print("req/s of every round (the table shows each level's best): " + "; ".join(
        f"c={c}: " + ", ".join(f"{p.rps:.1f}" for p in rounds[c]) for c in levels))
    total_5xx = sum(p.fivexx for p in phases_all)
    total_errors = sum(p.errors for p in phases_all)
    valid = sum(p.valid for p in phases_all)
    wrong = sum(p.wrong for p in phases_all)
    bad_4xx = mixed.bad_4xx
    by_level = {p.concurrency: p.rps for p in phases if "malformed" not in p.name}
    ratio = by_level.get(levels[-1], 0.0) / by_level[levels[0]] if by_level.get(levels[0]) else 0.0
    checks = [
        ("5xx answers", f"{total_5xx}", "0", total_5xx == 0),
        ("transport errors", f"{total_errors}", "0", total_errors == 0),
        ("malformed answered 4xx", f"{bad_4xx}/{mixed.malformed}", f"{args.malformed}/{args.malformed}",
         bad_4xx == mixed.malformed == args.malformed),
        ("server alive at the end", "yes" if alive else "no", "yes", alive),
        (f"valid answers == predict_action (atol {args.tolerance:g})", f"{valid - wrong}/{valid}", f"{valid}/{valid}",
         wrong == 0),
        (f"req/s at {levels[-1]} / at {levels[0]}", f"{ratio:.2f}x", ">= 2x", ratio >= 2.0),
    ]
    print()
    width = max(len(c[0]) for c in checks)
    for name, got, target, ok in checks:
        print(f"{name:<{width}}  {got:>12}  target {target:<12} {'PASS' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "policy": policy_dir, "parameters": parameters,
            "policy_info": {k: described.get(k) for k in ("device", "dtype")},
            "phases": [{"name": p.name, "concurrency": p.concurrency, "valid": p.valid, "malformed": p.malformed,
                        "rps": p.rps, "seconds": p.seconds, "server_cpu_s": p.server_cpu,
                        "client_cpu_s": p.client_cpu, "errors": p.errors, "p50_ms": p.pct(50),
                        "p99_ms": p.pct(99), "statuses": p.statuses,
                        "mean_batch": p.batches[0] / p.batches[1] if p.batches[1] else 0.0} for p in phases],
            "rounds_rps": {str(c): [p.rps for p in rounds[c]] for c in levels},
            "checks": {name: {"value": got, "target": target, "pass": ok} for name, got, target, ok in checks}},
            indent=2))
    tmp.cleanup()
    return 0 if all(c[3] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
