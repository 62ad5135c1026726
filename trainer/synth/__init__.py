"""The synthetic generator: its world model, vocabulary, texts, pooled sampling at scale and file writers."""
