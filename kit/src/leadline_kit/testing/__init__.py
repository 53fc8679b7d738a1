"""Test support: real PostgreSQL, NATS JetStream and Dovecot started on loopback, and clients."""
