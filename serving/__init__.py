"""HTTP API (FastAPI) for apps and admins; arrives with the serving issue."""
