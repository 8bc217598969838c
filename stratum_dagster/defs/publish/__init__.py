"""The Hub publish asset and the reconcile job."""
