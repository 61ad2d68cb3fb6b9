"""Training: the three-stage trainer behind train.py."""
