"""Hermes-R automatic segmentation (72 task priors, 71 structures from 11 datasets): network,
preprocessing, sliding-window inference, catalogue and the AutoSegmenter."""
