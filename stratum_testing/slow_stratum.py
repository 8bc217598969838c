"""A `stratum process` entry slowed down for crash and stop tests, run as `python -c SLOW_PROCESS ARGS…`."""

# `stratum process` whose decodes take 50 ms each (a run long enough to be stopped in the middle),
# and whose pixel pass sleeps `SLOW_PASS_S` seconds per batch when that is set (a stop that must wait).
SLOW_PROCESS = """
import os, sys, time
import stratum_core.engine as engine
from stratum_core.passes.pixel import PixelPass
from stratum_core.cli import main
real_decode = engine.decode
def slow_decode(path):
    time.sleep(0.05)
    return real_decode(path)
engine.decode = slow_decode
real_forward = PixelPass.forward
def slow_forward(self, batch):
    time.sleep(float(os.environ.get("SLOW_PASS_S", "0")))
    return real_forward(self, batch)
PixelPass.forward = slow_forward
sys.exit(main(sys.argv[1:]))
"""
