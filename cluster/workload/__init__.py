"""Workloads for the simulator and benchmarks: prompt files, arrival processes, trace replay,
the project's token counter, and converters from the shared data sets to prompt files.

No Ray, vLLM or torch import here: the simulator loads this package on its own.
"""
