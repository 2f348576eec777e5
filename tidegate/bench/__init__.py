"""The latency and load harness. It drives live servers from the outside, through the public
protocol only (``tidegate.protocol`` and its client), and writes JSON reports."""
