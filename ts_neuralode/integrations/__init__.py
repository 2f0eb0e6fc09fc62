"""Services beside the API (MLflow: :mod:`.mlflow`)."""
