"""Where a model runs: the backend seam (base.py: ChatRequest in, ChatResult out), the
llama.cpp engine (engine/, the only code that owns llama.cpp), the OpenAI-compatible server
client (remote.py, http_json.py), log-probabilities, and the request cache that wraps any backend.
A new backend is a class with `name` and `chat(requests, on_result)` here.
"""
