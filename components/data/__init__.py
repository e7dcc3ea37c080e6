"""Training and live data: sources (synthetic, file, Prometheus), validated and split by time."""
