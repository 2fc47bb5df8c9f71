"""Federated algorithms shared by clients and the coordinator: codecs, validation, aggregation.

Plain functions on tensors and bytes; nothing here imports Flower's client or server apps.
"""
