"""The enforcement pipeline, one module per step in data-flow order.

decode -> frames -> batching (micro-batched inference) -> fuse (belief update) -> decide -> emit,
composed by `pipeline.Pipeline` over the ports in `ports.py` (the step contract is written there);
`assemble` (the only reader of Settings) wires the adapters in; `shadow` observes decided events.
"""
