"""Fairness for speech: find the speakers an ASR model fails and shrink the gaps.

Cohort discovery (geographic tree, geo-demographic partitions, k-means over speaker
embeddings), EWC fine-tuning on the worst cohorts, and speaker verification with
adversarial reweighting, on the embedded `digits_fairness` corpus.
"""
