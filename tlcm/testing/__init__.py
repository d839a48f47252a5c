"""Offline tiny-model kit: seeded SDXL-architecture components for tests and demos (no downloads)."""
