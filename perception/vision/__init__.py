"""perception/vision: GLM-4.1V image preprocessing and vision tower.

`processor` (numpy + pillow only, cheap to import: the gateway uses it to decode images and
count image tokens) and `model` (torch: the vision tower the vision stage runs) are imported
separately on purpose; this package imports neither.
"""
