"""The training program of the shipped small model (`python -m hypic_rag.training ...`).

train: the training loop and its command line; data: training sequences and their pointers;
model_init: the model's config and attention initialisations; attention_supervision and
block_attention: the training-only losses and the cached-segment mask; probe_first_token: a
diagnostic of a checkpoint's first answer token (`python -m hypic_rag.training.probe_first_token`).
"""
