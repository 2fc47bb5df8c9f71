"""One module per codec behind the interface in base.py; registry.py maps names to them."""
