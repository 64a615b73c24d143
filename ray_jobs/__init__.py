"""Ray jobs: the training entry point (``python -m ray_jobs.train``), hyper-parameter search and their building blocks.

Everything here runs on a Ray cluster (a local loopback head by default) and imports torch; the core package
``pawfinder`` stays torch-free for serving.
"""

import os

# Ray binds every interface unless this is set before it is first imported; local runs stay on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
