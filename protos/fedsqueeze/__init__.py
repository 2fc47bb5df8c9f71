"""fedsqueeze wire format, package fedsqueeze.v1."""
