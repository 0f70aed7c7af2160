"""The consumer's sinks, one module each; ``base.py`` holds the contract they share."""
