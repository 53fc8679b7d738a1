"""Leadline's shared event and request/reply schemas."""
