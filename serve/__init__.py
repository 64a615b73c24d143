"""PawFinder serving: a Ray Serve application with a FastAPI ingress in front of the champion ONNX model.

Nothing under ``serve/`` imports torch: the model runs on ONNX Runtime through ``pawfinder.inference``.
"""
