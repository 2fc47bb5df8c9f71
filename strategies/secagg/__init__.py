"""Secure aggregation (SecAgg+, Bell et al. 2020) as pure functions and state machines, with no Flower imports.

``party.Party`` is one client's side, ``aggregator.Aggregator`` the coordinator's; both speak the protobuf messages
of protos/fedsqueeze/v1/secagg.proto. ``identity`` signs and checks what a party says against a lying coordinator,
``ring`` quantises updates into the integer ring the masks live in, ``updates`` turns an update into ring words and
the sums back into the codec's aggregate (each codec's own part lives in ``strategies/codecs/<name>/secure.py``).
"""
