"""Avro contracts of agegate's topics, shipped inside the wheel.

`manifest.json` is the local schema registry: it maps schema ids to `.avsc` files. Every released
version of each schema is kept; the newest version of a subject is the reader schema, and a test
reads data written with every older version (BACKWARD compatibility).
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def schema_root() -> Traversable:
    return files(__name__)
