"""ssm_lab: train, sweep and compare deep state-space models on the standard SSM benchmarks."""
