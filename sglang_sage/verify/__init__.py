"""``verify.py``: reproducible verification of the ``sage_attn`` backend against a baseline backend.

Modules: ``metrics`` (pure math), ``corpus``/``passkey``/``workload`` (inputs), ``engine_runner`` and
``drift`` (GPU workers, run as subprocesses), ``server`` (HTTP check), ``checks`` (thresholds →
pass/fail), ``report``/``plots`` (outputs), ``cli`` (orchestration). Importing this package is cheap
(no torch, no sglang): the GPU work happens in the workers.
"""
