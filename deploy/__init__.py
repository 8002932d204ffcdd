"""Deployment tooling: the consortium's TLS certificates and site keys (`fedclinic certs`)."""
