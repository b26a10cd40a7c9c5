"""The GPU-only scripts that ``benchmarks/gpu_check.sh`` runs on a lent GPU machine.

``bench_gpu`` (ceilings, the ops table on the GPU, the targets), ``sanitize_smoke`` (every op
once, for compute-sanitizer), ``review_checks`` (fused == separate, tensor-core Grams, the
cliffs). Each has a ``--dry-run`` (or ``--device cpu``) that runs it at tiny sizes on the CPU.
"""
