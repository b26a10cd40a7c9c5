"""The pieces of a distillation training step above the single ops, and the step itself.

``bench_loss`` (``structural_loss``, also at the paper's shape), ``bench_kd`` (cross-tokenizer
logit KD), ``bench_align`` (the alignment merge), ``bench_data`` (span annotation and
collation), ``bench_step`` (one off-policy training step), ``bench_onpolicy`` (one on-policy
step); each against its reference in the same run.
"""
