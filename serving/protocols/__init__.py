"""Protocol codecs onto the one pipeline: OIP v2, MLflow/Databricks invocations, KServe v1."""
