from leadline_kit.migrations import run_env
from leadline_sync.models import metadata

run_env(metadata)
