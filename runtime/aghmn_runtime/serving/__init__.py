"""Serving: ``aghmn-serve`` / ``aghmn-fast serve`` (an ASGI app on uvicorn, micro-batched, with a durable
conversation store) and the same app on Ray Serve with a Redis store. See docs/SERVING.md."""
