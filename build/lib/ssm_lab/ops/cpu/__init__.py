"""CPU kernels (C, compiled on first import with the system's C compiler: ``build.py``) for the recurrences
of ssm_lab.ops; each has its torch reference twin there. ``ssm_lab.ops.scan`` decides when a kernel runs
(CPU tensors of a supported dtype) and runs the torch path where the kernel could not be built.
"""
