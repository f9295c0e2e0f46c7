"""``python -m framework.preference '<json settings>'``: one preference run (`run_preference`) in this
process; the JSON object holds `PreferenceRunSettings` fields. Prints the summary as JSON."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    from framework.preference.run import PreferenceRunSettings, run_preference

    summary = run_preference(PreferenceRunSettings(**json.loads(args[0])))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
