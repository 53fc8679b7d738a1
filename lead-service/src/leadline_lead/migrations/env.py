from leadline_kit.migrations import run_env
from leadline_lead.models import metadata

run_env(metadata)
