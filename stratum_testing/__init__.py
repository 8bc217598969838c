"""Test doubles shared by the test suite and bench/: sample images, smoke-test models in the
real weight formats, loopback servers speaking Ollama's, OpenAI's and the Hub's APIs.

Installed with the package so `bench/` and `tests/` import it the same way; its heavier
imports (torch, onnx) are the `dev` extra's.
"""
