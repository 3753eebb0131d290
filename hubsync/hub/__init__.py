"""Effects on a Hub: the client module (the only one that builds huggingface_hub calls) and plan execution."""
