"""Launchers for Google Cloud: Vertex AI jobs (vertex.py), the image (Dockerfile), GPU VMs (gpu_vm/)."""
