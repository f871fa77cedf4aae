"""What drives the pipeline: the one driver (`driver.py`), the faust worker and the replay tool."""
