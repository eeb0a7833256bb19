"""Batch scoring on Spark, and the fallback scores it leaves in Redis for the gateway."""
