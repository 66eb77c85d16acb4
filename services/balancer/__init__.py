"""The balancer: keeps the live table of workers fed by their heartbeats and routes each batch."""
