"""Imported by a sidecar as a preload: delays worker start-up by a second."""
import time

time.sleep(1.0)
