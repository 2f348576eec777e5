"""Engine microbenchmarks: measured in-process on the engines themselves (the only part of
bench/ that imports the engine layer; scenarios run them as subprocesses)."""
