"""The tokenizer stage: SentencePiece training and token shards."""
