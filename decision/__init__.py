"""Decision stage: fusion of modality embeddings and the GLM-4 decoder."""
