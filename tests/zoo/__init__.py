"""Tests that run plugsurgeon's public API on real third-party model zoos (issue 7).

Installed with the ``zoo`` extra (``pip install -e '.[zoo]'``, included in ``.[dev]``); each module skips when
its zoo is not installed. Expected counts come from the models themselves (module attributes, forward hooks,
an eager add counter in `counting.py`), never from plugsurgeon's output.
"""
