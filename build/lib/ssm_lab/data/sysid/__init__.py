"""Nonlinear system identification (nonlinearbenchmark.org): Wiener-Hammerstein, Silverbox,
cascaded tanks, EMPS and Bouc-Wen, from the official files or offline simulators.

records.py (an input-output record), files.py (loaders of the official files), excitation.py and
integrate.py (inputs and the RK4 engine), one module per simulator, benchmarks.py (what each
benchmark declares), datamodule.py (the SplitDataModule)."""
