"""Company plans and their limits on synced email (R14): ``service`` decides, ``repository`` holds
every query."""
