"""The distillation study: does MTA help, and what do the loss's deliberate deviations cost.

``python -m benchmarks.study.quality`` (its settings, flags and steps; the question and setup in
its docstring) runs, in order: ``prepare`` (data, models, layer schedule and aligner, spaCy
spans and the one cached teacher pass, ``cache``), ``run`` (one arm and seed: training and
evaluation; ROUGE-L from ``rouge``), ``summary`` (mean ± sd per arm, paired differences, the
Markdown report); the arms and their extra loss terms are in ``arms``, the figure in
``benchmarks/plots.py``. ``python -m benchmarks.study.deviations`` measures the loss's
deliberate deviations from the authors' (docs/DESIGN.md §6).
"""
