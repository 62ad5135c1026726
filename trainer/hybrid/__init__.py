"""The hybrid two-tower: the model, its recipe and search, training, the popularity blend and the EASE part."""
