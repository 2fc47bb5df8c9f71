"""Secure aggregation (SecAgg+, Bell et al. 2020) as pure functions and state machines, with no Flower imports.

``party.Party`` is one client's side, ``server.Aggregator`` the coordinator's; both speak the protobuf messages of
protos/fedsqueeze/v1/secagg.proto. ``ring`` quantises updates into the integer ring the masks live in.
"""
