from leadline_kit.migrations import run_env
from leadline_quota.models import metadata

run_env(metadata)
