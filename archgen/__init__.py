"""archgen: a compiler for neural-network mixer architectures.

The top-level package stays import-light (no torch); use :mod:`archgen.api` for the Python API.
"""

__version__ = "0.1.0"
