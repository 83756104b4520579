"""The llama.cpp boundary: native bindings, runtime lifetimes, GGUF reading, hidden-state
capture and the LM-head projection. Nothing here knows about LED or about problem sets."""
