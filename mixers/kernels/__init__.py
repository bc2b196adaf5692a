"""Optional compiled kernels of archgen's mixers (built on first use, with a torch fallback)."""
