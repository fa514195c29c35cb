"""In-process models on transformers: folder loading, processors without torchvision, generation, closed sets."""
