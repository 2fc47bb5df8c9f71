"""fedsqueeze.v1 messages."""
