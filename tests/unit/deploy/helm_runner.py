"""Run one Helm action with helm-sdkpy and print its result as JSON on stdout.

The tests run this file in a subprocess: Helm's Go runtime reads the environment (such
as HELM_DRIVER) once, when the library loads, and logs straight to the process's stderr,
where the template functions `fail` and `required` report in lint mode.

    python helm_runner.py lint CHART_DIR
    python helm_runner.py install KUBECONFIG NAMESPACE RELEASE CHART_DIR VALUES_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    import helm_sdkpy

    result: Any
    if argv[:1] == ["lint"] and len(argv) == 2:
        result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(argv[1]))
    elif argv[:1] == ["install"] and len(argv) == 6:
        kubeconfig, namespace, release, chart, values_path = argv[1:]
        values = json.loads(Path(values_path).read_text()) or None
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        result = asyncio.run(
            helm_sdkpy.Install(config).run(release, chart, values, wait=False, timeout=60)
        )
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
