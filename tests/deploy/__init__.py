"""Deployment artefacts: Dockerfile, Kubernetes manifests (rendered with kustomize), observability."""
