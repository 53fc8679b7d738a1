"""Quota reservations (R14): ``service`` decides, ``repository`` holds every query."""
