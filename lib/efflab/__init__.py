"""efflab: the library behind the efficient deep learning course.

Notebooks call ``efflab.setup(MODE, DEVICE, SEED)`` first; everything else lives in one module per idea.
"""

from efflab.runtime import Run, Timer, seed_everything, setup

__all__ = ["Run", "Timer", "seed_everything", "setup"]
__version__ = "0.1.0"
