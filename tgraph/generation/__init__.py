"""Generation for causal LMs: a KV-cache step graph, its runners and the decoding loop."""
