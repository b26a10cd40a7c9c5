"""The distillation study: does MTA help, and what do the loss's deliberate deviations cost.

``quality`` (``python -m benchmarks.study.quality``: seeded training runs per arm, held-out CE,
ROUGE-L, its tables and figure), ``cache`` (the one teacher pass every run reads), ``rouge``
(ROUGE-L without a dependency), ``deviations`` (``python -m benchmarks.study.deviations``).
"""
