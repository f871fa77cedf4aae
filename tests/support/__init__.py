"""Helpers the tests share: service reachability and a real worker harness. Never imported by bench/ or stream/."""
