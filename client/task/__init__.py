"""The learning task shared by clients and the coordinator's evaluation.

Model loading (bundled or any local Hugging Face directory), PEFT LoRA wiring, data
loading and partitioning, local training and evaluation. Nothing here imports Flower.
"""
