"""helm lint for deploy/helm/awork-gateway without a helm binary, through helm-sdkpy (Helm's
Go library): once with the chart's values.yaml, and once per file given, merged over it
(as `helm lint -f FILE` would). Rendering errors and invalid YAML fail; exit 1 then."""

import asyncio
import os
import shutil
import sys
import tempfile

import yaml
from helm_sdkpy import Configuration, Lint


def merge(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def lint(config, chart, values_file):
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, os.path.basename(os.path.abspath(chart)))
        shutil.copytree(chart, copy)
        if values_file:
            with open(os.path.join(chart, "values.yaml"), encoding="utf-8") as f:
                values = yaml.safe_load(f)
            with open(values_file, encoding="utf-8") as f:
                merge(values, yaml.safe_load(f))
            with open(os.path.join(copy, "values.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(values, f)
        result = asyncio.run(Lint(config).run(copy))
    # Severity: 1 info, 2 warning, 3 error.
    return sorted({m["Path"] for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2})


def main():
    chart, extra = sys.argv[1], sys.argv[2:]
    config = Configuration(namespace="awork-gateway")
    failed = False
    for values_file in [None, *extra]:
        problems = lint(config, chart, values_file)
        print(f"helm lint {chart} ({values_file or 'values.yaml'}): {'ok' if not problems else problems}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
