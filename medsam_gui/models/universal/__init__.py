"""The CLIP-Driven Universal Model (ljwztc/CLIP-Driven-Universal-Model): Swin UNETR + CLIP
text-conditioned heads for 32 abdominal CT structures, with its official inference path.

network (model + loader), preprocess, sliding_window, postprocess, catalogue, segmenter.
Nothing is imported or built at package import time.
"""
