"""The scaler: keeps the right number of workers running, through a pluggable runtime."""
