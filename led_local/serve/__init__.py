"""An OpenAI-compatible HTTP server over the decode engine (``led-local serve``)."""
