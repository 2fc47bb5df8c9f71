"""In-process experiments: the same ServerApp and ClientApp, many clients, Flower's simulation engine."""
