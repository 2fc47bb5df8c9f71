"""Test support, in one place named for it: the fuzzing engine and its targets (``fuzz``, ``fuzz_codecs``,
``fuzz_secagg``), the kill-and-resume drivers (``crash_resume``), the tiny causal LM made from a config
(``tiny_model``) and the reader of secure aggregation's audit trail (``audit``). Tests and benchmarks use it;
product code never imports it (tests/test_import_graph.py checks that)."""
