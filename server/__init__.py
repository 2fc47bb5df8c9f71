"""fedsqueeze server package."""
