from leadline_gateway.models import metadata
from leadline_kit.migrations import run_env

run_env(metadata)
