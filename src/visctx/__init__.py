"""visctx: the visual-context study of video MLLMs (T frames x M tokens), end to end.

Importing the package pins the CPU kernels torch and NumPy dispatch to (:mod:`visctx.cpu`), before
either is imported, so that every process the project starts computes the same bits on any x86-64
CPU of the CI kind.
"""

from visctx.cpu import pin_environment as _pin_environment

_pin_environment()
