"""agegate's streaming side: codec, topics, belief, policy, worker and tools.

`stream` may import `model`; `model` never imports `stream`.
"""

__version__ = "0.1.0"
