"""Commands around the pipeline: demo, load generator, produce, dead-letter redrive, evaluation, online
metrics, decision diff, local infra and a local worker process.

Tools may import anything; nothing but the CLI (stream/cli.py) imports a tool.
"""
