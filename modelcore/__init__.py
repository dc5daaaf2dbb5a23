"""Model plumbing shared by the stages: config, checkpoint reading, tokenizer, common layers."""
