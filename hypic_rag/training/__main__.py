"""`python -m hypic_rag.training ARGS`: train a small hybrid (the shipped model's recipe is in train.py)."""

from hypic_rag.training.train import main

main()
