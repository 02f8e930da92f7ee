"""`edgeinfer serve`: an OpenAI-compatible HTTP server over one loaded model (needs the [serve] extra).

The request path, one module each: api_errors (OpenAI's error JSON) -> schema (a request body checked field by
field) -> prompt (encoded and fitted to the context) -> scheduler (N at once, a bounded queue, 503 beyond) ->
jobs (one generator per request in a worker thread, cancelled when its client leaves) with prefix_cache (idle
generators kept by the tokens they hold) -> reasoning / responses / sse (OpenAI's JSON and server-sent events)
-> app (routes, auth, body limits) -> server (uvicorn: header deadline, graceful stop).
"""
