"""The HTTP transport: a FastAPI app over the transport-free pipeline."""
