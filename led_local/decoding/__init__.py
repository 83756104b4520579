"""Decoding: samplers (pure numpy), methods, the decode engine, generation, chat and
continuous batching. Uses ``led_local.llama``; knows nothing about problem files or runs."""
