"""The company mailbox limit (R9): ``service`` decides, ``repository`` holds every query."""
