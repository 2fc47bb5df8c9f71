"""Protobuf wire formats for everything fedsqueeze sends, and their generated Python modules.

Regenerate after editing a ``.proto``: ``python -m protos.generate``; a test checks the committed
modules match.
"""
