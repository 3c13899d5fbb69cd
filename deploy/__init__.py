"""Launchers for Google Cloud: Vertex AI jobs (deploy/vertex.py), images (deploy/Dockerfile), GPU VMs (deploy/gpu_vm/)."""
