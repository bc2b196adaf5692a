"""Torch implementations of archgen's mixers; each is a plain ``nn.Module`` usable on its own."""
