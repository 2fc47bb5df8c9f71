"""The learning task shared by clients and the coordinator's evaluation.

Task kinds behind one interface (``kinds/``: instruction tuning and classification), model loading (bundled or
any local Hugging Face directory), PEFT LoRA wiring, data loading and partitioning, local training and
evaluation. Nothing here imports Flower.
"""
