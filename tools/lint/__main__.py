"""``python -m tools.lint``: report every breach of the house rules; exit 1 if there is one."""

import sys
from pathlib import Path

from tools.lint import layout, problems, scope, states

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    violations = [
        *scope.check_tree(ROOT),
        *states.check_tree(ROOT),
        *problems.check_tree(ROOT),
        *layout.check_tree(ROOT),
    ]
    for violation in violations:
        print(violation)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
