"""Proof that curation helps: train the same model on each subset at equal samples seen, evaluate all.

Modules: evalsets (the built-in evaluation suite, clip_benchmark's layout), subsets (the pool and
laion_filter recipes), training (open_clip_train runs), evaluate (clip_benchmark's metrics),
results (results.json/.md/.png); __main__ is the command line.
"""
