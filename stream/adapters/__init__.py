"""The outside world behind the pipeline's ports: Kafka (sink, reader, topics, wait), the Avro codec and
schema registry, and the belief stores (Redis and its Lua script, in memory, journaled).

Imports the base modules and core only. The pipeline never imports an adapter: `stream.pipeline.assemble`
wires them in.
"""
