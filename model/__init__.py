"""agegate's model side: age-regression models, datasets, training, checkpoints and the inference engine.

Importable with only torch, numpy, Pillow and safetensors installed (the GPU benchmark machine has
nothing else), and never imports `stream`.
"""
