"""Configuration and helpers shared by the dispatcher, the workers and the clients."""
