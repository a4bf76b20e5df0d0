"""`lapa serve`: a policy over HTTP (FastAPI + uvicorn; the `serve` extra).

- `decode`: request payloads -> (image uint8 [H, W, 3], instruction) with every check, and actions ->
  response bodies (plain JSON, json_numpy for OpenVLA's client); no web framework.
- `batcher`: the asyncio micro-batcher that lets concurrent requests share one batched policy call.
- `app`: `create_app(policy, config) -> FastAPI` (POST /act, GET /health, GET /info).
- `serve_config`: `ServeConfig` (conf/serve.yaml); `server`: the command `run(cfg)`.

Importing this package imports neither FastAPI nor the policy: `lapa --help` stays fast.
"""
