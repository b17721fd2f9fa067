"""The miniature's evaluator: a shapes-world detector standing in for T2I-CompBench's
BLIP-VQA / UniDet scorers, its validation on held-out renders, and FID on its features."""
