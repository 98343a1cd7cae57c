"""A search service and its web page: drop an image, see its neighbours.

An HTTP service over one index (memory-mapped) and the model that made it (loaded once):
:func:`create_app` builds the ASGI app (Starlette) over a :class:`Searcher`; :func:`serve` runs it
with uvicorn, as ``tools/serve.py`` does. The page (``static/``: HTML, JS, CSS, no build step)
uploads or takes a dropped image, shows the results as thumbnails with their distances and labels,
and searches again from any result. :mod:`.app` lists the JSON API.

This package sits at the top of the pipeline: it uses search, encode and hamming; nothing imports
it.
"""
from .app import MAX_UPLOAD, create_app
from .engine import MAX_K, Searcher, decode_image
from .params import ServeError


def serve(searcher, host="127.0.0.1", port=8000, max_upload=MAX_UPLOAD, log_level="info"):
    """Serve ``searcher`` on host:port until interrupted (one process: the model is loaded once,
    and a worker per CPU would load it once each)."""
    import uvicorn  # noqa: PLC0415

    uvicorn.run(create_app(searcher, max_upload=max_upload), host=host, port=port,
                log_level=log_level, workers=1)


__all__ = ["create_app", "serve", "Searcher", "ServeError", "decode_image", "MAX_UPLOAD",
           "MAX_K"]
