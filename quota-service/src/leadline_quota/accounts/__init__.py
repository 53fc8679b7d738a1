"""Sending accounts (R14): ``service`` decides the limit layers, ``repository`` holds every
query."""
