"""kdrun: a command-line experiment runner for knowledge distillation."""

import os

# OpenMP reads its wait policy once, when torch loads it, so it is set here, before any kdrun
# module imports torch (and inherited by joblib workers). Passive: a thread with no work sleeps
# instead of spinning, which on a shared machine burns the cores other processes need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
