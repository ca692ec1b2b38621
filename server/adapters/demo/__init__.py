"""The demo lab (demo.yaml) and generated history for demos and benchmarks (history.py)."""
