"""Task kinds, one module each, behind the interface in ``base``; ``registry.kind_of`` picks one by name."""
