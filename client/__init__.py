"""fedsqueeze client: the Flower ClientApp and the model/data task it trains."""
