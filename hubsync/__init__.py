"""hubsync: push Trainer/PEFT checkpoints to the Hugging Face Hub as revisions, and pull them back."""

__version__ = "0.1.0"
